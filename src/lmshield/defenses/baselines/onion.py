"""ONION (Qi et al. 2021): remove words whose deletion lowers a language model's perplexity a lot.

Suspicion of word ``i``: ``ppl(text) - ppl(text without word i)``; words above ``threshold`` are removed
and the victim classifies what is left. Any causal LM works (GPT-2 in the paper); it is loaded safely
(safetensors only, no remote code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmshield.errors import InputError


def load_causal_lm(model: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer: safetensors only, no remote code, one-line errors."""
    from transformers import AutoModelForCausalLM

    from lmshield.models.loading import load_pretrained

    loaded = load_pretrained(model, AutoModelForCausalLM, device=device, check_architecture=False)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return loaded.model, tokenizer


class ONION:
    """Perplexity-based word removal in front of a victim."""

    def __init__(
        self,
        lm: str | Path | tuple[Any, Any],
        *,
        threshold: float = 0.0,
        max_words: int = 64,
        batch_size: int = 32,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model, self.tokenizer = lm if isinstance(lm, tuple) else load_causal_lm(lm, device)
        self.threshold = threshold
        self.max_words = max_words
        self.batch_size = batch_size
        self.progress = progress

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str]) -> list[float]:
        """Per-text perplexity under the LM (empty texts get ``inf``)."""
        out: list[float] = []
        bos = self.tokenizer.bos_token or ""
        max_tokens = max(128, 4 * self.max_words)
        for start in range(0, len(texts), self.batch_size):
            chunk = [f"{bos}{t}" for t in texts[start : start + self.batch_size]]
            # room for max_words words of several tokens each, so deletions never differ only by truncation
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
            ids, mask = batch["input_ids"].to(self.model.device), batch["attention_mask"].to(self.model.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target, keep = ids[:, 1:], mask[:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none") * keep
            counts = keep.sum(1)
            for total, count in zip(nll.sum(1).tolist(), counts.tolist(), strict=True):
                out.append(math.exp(min(total / count, 50.0)) if count > 0 else math.inf)
        return out

    def suspicion(self, text: str) -> list[float]:
        """``ppl(text) - ppl(text without word i)`` for each of the first ``max_words`` words."""
        words = text.split()[: self.max_words]
        if len(words) < 2:
            return [0.0] * len(words)
        variants = [" ".join(words), *(" ".join(words[:i] + words[i + 1 :]) for i in range(len(words)))]
        ppl = self.perplexity(variants)
        return [ppl[0] - p for p in ppl[1:]]

    def clean(self, texts: Sequence[str]) -> list[str]:
        """The texts with every word whose suspicion exceeds ``threshold`` removed."""
        if not isinstance(texts, (list, tuple)):
            raise InputError("expected a list of texts")
        out = []
        for text in tqdm(texts, desc="ONION", disable=not self.progress, unit="text"):
            words = str(text).split()
            scores = self.suspicion(str(text))
            kept = [w for i, w in enumerate(words) if i >= len(scores) or scores[i] <= self.threshold]
            out.append(" ".join(kept))
        return out
