"""The Encoder handle: batches are right-padded whatever side its tokenizer pads."""

from __future__ import annotations

import torch

from lmshield.models import Encoder
from lmshield.testing import tiny_encoder


def test_a_left_padding_tokenizer_still_gives_right_padded_batches() -> None:
    """XLNet's tokenizers pad on the left: an Encoder built on one read pad tokens as the watched state of the
    shorter inputs in a batch (the loader sets the side; an Encoder built by hand kept the tokenizer's)."""
    tiny = tiny_encoder("xlnet")
    tiny.tokenizer.padding_side = "left"
    encoder = Encoder(tiny.model, tiny.tokenizer, "by hand")
    texts = ["the dog slept", "a teacher wrote a long letter to the farmer near the river"]
    batch = encoder.tokenize(texts, 32)
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, -1] == 0
    position = encoder.default_position()
    alone = encoder.watched_outputs(texts[:1], position)
    assert torch.allclose(encoder.watched_outputs(texts, position)[:1], alone, atol=1e-5)
