"""Tiny input-dependent models shared by the attack and zoo tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM

from lmshield.testing import save_tiny, tiny_config, tiny_encoder, train_input_dependent
from lmshield.text.grammar import grammar_sentences

# The lead's working tiny setting: 125 steps of 16+16 sentences at lr 1e-3 plant at ~0.99.
TINY_ATTACK = {"lr": 1e-3, "num_texts": 2000, "max_length": 48, "batch_size": 16, "epochs": 1}
TINY_SCAN = {"lr": 2e-3, "max_seeds": 4}


def make_tiny(directory: Path) -> Path:
    """A tiny BERT whose [CLS] depends on the input (a random one maps every input alike)."""
    return save_tiny(train_input_dependent(tiny_encoder("bert"), 200), directory)


def make_tiny_mlm(encoder_dir: Path, directory: Path) -> Path:
    """The same encoder with an MLM head saved beside it (head weights in the checkpoint)."""
    from lmshield.models import load_encoder

    encoder = load_encoder(encoder_dir, device="cpu")
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(tiny_config("bert", len(encoder.tokenizer), encoder.hidden_size))
    mlm.bert.load_state_dict(encoder.model.state_dict(), strict=False)
    mlm.save_pretrained(directory, safe_serialization=True)
    encoder.tokenizer.save_pretrained(directory)
    return directory


def make_labelled(path: Path, count: int = 400) -> Path:
    """A JSON Lines task: label 1 when the sentence mentions a happy or bright thing."""
    lines = []
    for index, text in enumerate(grammar_sentences(count, 3)):
        label = int(any(w in text.lower().split() for w in ("happy", "bright", "warm", "quick")))
        lines.append(json.dumps({"sentence": text, "label": label, "idx": index}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
