"""ONION (Qi et al. 2021): remove words whose deletion lowers a language model's perplexity a lot.

Suspicion of word ``i``: ``ppl(text) - ppl(text without word i)``; words above ``threshold`` are removed
and the victim classifies what is left. Any causal LM works (GPT-2 in the paper); it is loaded safely
(safetensors only, no remote code). :meth:`ONION.calibrate` picks the threshold that removes the most while
the victim's accuracy on labelled held-out texts drops by at most a budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmshield.devices import resolve_device
from lmshield.errors import InputError, check_whole, reject_unknown_params
from lmshield.text.inputs import as_texts


def load_causal_lm(model: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer: safetensors only, no remote code, one-line errors."""
    from transformers import AutoModelForCausalLM

    from lmshield.models.architectures import get_architecture
    from lmshield.models.loading import load_pretrained

    loaded = load_pretrained(model, AutoModelForCausalLM, device=device, check_architecture=False)
    config = loaded.model.config
    if get_architecture(config.model_type) is not None and config.model_type != "xlnet" and not config.is_decoder:
        raise InputError(  # transformers gives it a random LM head: its perplexities would mean nothing
            f"{model}: a {config.model_type} encoder reads in both directions, not a causal language model; "
            "ONION needs one (a GPT-2, say)"
        )
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return loaded.model, tokenizer


class ONION:
    """Perplexity-based word removal in front of a victim.

    ``lm``: a causal LM's path, or a loaded ``(model, tokenizer)``. ``threshold``: words whose suspicion exceeds
    it are removed, until :meth:`calibrate` sets ``threshold_`` for a victim.
    """

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
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or math.isnan(threshold):
            raise InputError(f"threshold must be a number (inf removes nothing), got {threshold!r}")
        check_whole({"max_words": max_words, "batch_size": batch_size})
        self.model, self.tokenizer = lm if isinstance(lm, tuple) else load_causal_lm(lm, device)
        if isinstance(lm, tuple) and device is not None:  # a loaded pair goes where it is asked to run
            self.model.to(resolve_device(device))
        self.lm, self.device = lm, device
        self.threshold = threshold
        self.max_words = max_words
        self.batch_size = batch_size
        self.progress = progress

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's estimator protocol)."""
        names = ("lm", "threshold", "max_words", "batch_size", "device", "progress")
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> ONION:
        """Change parameters (validated as in the constructor; the LM is loaded again only for a new ``lm``);
        calibrate again afterwards."""
        reject_unknown_params(self, params)
        loaded = {} if "lm" in params or "device" in params else {"lm": (self.model, self.tokenizer)}
        checked = type(self)(**{**self.get_params(), **params, **loaded})  # bad values fail here
        vars(self).update({**vars(checked), "lm": params.get("lm", self.lm)})
        return self

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str]) -> list[float]:
        """Per-text perplexity under the LM (empty texts get ``inf``)."""
        out: list[float] = []
        bos = self.tokenizer.bos_token or ""
        max_tokens = min(max(128, 4 * self.max_words), self._lm_positions())
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

    def _lm_positions(self) -> int:
        """How many tokens the LM has positions for (GPT-2's ``n_positions``, others' ``max_position_embeddings``)."""
        config = self.model.config
        limits = [getattr(config, name, None) for name in ("n_positions", "max_position_embeddings", "n_ctx")]
        return min((limit for limit in limits if isinstance(limit, int) and limit > 1), default=1 << 30)

    def suspicion(self, text: str) -> list[float]:
        """``ppl(text) - ppl(text without word i)`` for each of the first ``max_words`` words."""
        words = text.split()[: self.max_words]
        if len(words) < 2:
            return [0.0] * len(words)
        variants = [" ".join(words), *(" ".join(words[:i] + words[i + 1 :]) for i in range(len(words)))]
        ppl = self.perplexity(variants)
        return [ppl[0] - p for p in ppl[1:]]

    @property
    def threshold_in_use(self) -> float:
        """``threshold_`` once calibrated, else ``threshold``."""
        return getattr(self, "threshold_", self.threshold)

    def clean(self, texts: Sequence[str]) -> list[str]:
        """The texts with every word whose suspicion exceeds :attr:`threshold_in_use` removed."""
        threshold, texts = self.threshold_in_use, as_texts(texts)
        return [_remove(text, scores, threshold) for text, scores in zip(texts, self._suspicions(texts), strict=True)]

    def calibrate(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        predict: Callable[[list[str]], Sequence[int]],
        max_drop: float = 0.02,
        candidates: int = 20,
    ) -> ONION:
        """Set ``threshold_`` to the lowest threshold (the most words removed) at which ``predict`` (the victim)
        labels the cleaned ``texts`` at most ``max_drop`` less accurately than the texts as given.

        Thresholds tried: 0 and ``candidates`` quantiles of the positive suspicions; none passing: nothing is
        removed (``inf``).
        """
        if not 0 <= max_drop < 1:
            raise InputError(f"max_drop must lie in [0, 1), got {max_drop}")
        texts = as_texts(texts)
        if len(texts) != len(labels) or not texts:
            raise InputError("ONION calibration needs as many labels as texts, and at least one text")
        suspicions = self._suspicions(texts)
        positive = np.array([score for scores in suspicions for score in scores if score > 0])
        tried = sorted(
            {0.0, *np.quantile(positive, np.linspace(0, 1, candidates)).tolist()} if positive.size else {0.0}
        )

        def accuracy(threshold: float) -> float:
            cleaned = [_remove(text, scores, threshold) for text, scores in zip(texts, suspicions, strict=True)]
            return float(np.mean([p == y for p, y in zip(predict(cleaned), labels, strict=True)]))

        floor = accuracy(math.inf) - max_drop - 1e-9  # a drop of exactly max_drop passes, float error or not
        self.threshold_ = next((t for t in tried if accuracy(t) >= floor), math.inf)
        return self

    def _suspicions(self, texts: list[str]) -> list[list[float]]:
        """Each text's suspicions (``texts`` checked by the caller)."""
        return [self.suspicion(text) for text in tqdm(texts, desc="ONION", disable=not self.progress, unit="text")]


def _remove(text: str, scores: list[float], threshold: float) -> str:
    """``text`` without the scored words whose suspicion exceeds ``threshold`` (unscored words stay)."""
    words = str(text).split()
    return " ".join(w for i, w in enumerate(words) if i >= len(scores) or scores[i] <= threshold)
