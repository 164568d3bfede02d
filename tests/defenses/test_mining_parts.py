"""The vectorised pieces of PV mining against slow, obviously-correct versions."""

from __future__ import annotations

import math

import torch

from lmshield.defenses.sanitizer.carriers import insert_soft_triggers, insertion_slots
from lmshield.defenses.sanitizer.mining import entropy_across_batch
from lmshield.defenses.sanitizer.monitor import sign_match


def test_soft_trigger_insertion_matches_a_python_loop():
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 6, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    triggers = torch.randn(2, 2, 4, generator=gen)
    positions = torch.tensor([[1, 3, 2], [5, 1, 1]])
    got, got_mask = insert_soft_triggers(embeds, mask, triggers, positions)
    for s in range(2):
        for b in range(3):
            p = int(positions[s, b])
            expected = torch.cat([embeds[b, :p], triggers[s], embeds[b, p:]])
            expected_mask = torch.cat([mask[b, :p], torch.ones(2, dtype=mask.dtype), mask[b, p:]])
            assert torch.equal(got[s * 3 + b], expected)
            assert torch.equal(got_mask[s * 3 + b], expected_mask)


def test_insertion_slots_are_word_starts_within_the_limit():
    # [CLS] w0 w0 w1 w2 [SEP] pad  -> word starts 1, 3, 4 and the end slot 5
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, -1, -1], [-1, 0, 1, 2, 3, 4, -1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    slots, counts = insertion_slots(word_ids, mask, max_word=4)
    assert slots[0, : counts[0]].tolist() == [1, 3, 4, 5]
    assert slots[1, : counts[1]].tolist() == [1, 2, 3, 4]  # 5 words: only before the first 4, no end slot


def test_collapse_entropy_reaches_its_ceiling_only_when_outputs_collapse():
    collapsed = torch.ones(1, 32, 8)
    spread = torch.randn(1, 32, 8) * 5
    assert math.isclose(float(entropy_across_batch(collapsed)), math.log(32), rel_tol=1e-6)
    assert float(entropy_across_batch(spread)) < math.log(32) - 0.5


def test_sign_agreement_counts_matching_signs():
    outputs = torch.tensor([[1.0, -2.0, 3.0, -4.0], [1.0, 1.0, 1.0, 1.0]])
    vectors = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert sign_match(outputs, vectors).squeeze(1).tolist() == [1.0, 0.5]


def test_mask_tokens_survive_truncation():
    from lmshield.defenses.sanitizer.carriers import add_mask_tokens
    from lmshield.testing import tiny_encoder

    encoder = tiny_encoder("bert")
    long_texts = [" ".join(["the old dog watched a river"] * 8)] * 20
    masked = add_mask_tokens(encoder, long_texts, token_budget=12, seed=0)
    ids = encoder.tokenize(masked, 12)["input_ids"]
    assert bool((ids == encoder.mask_token_id).any(dim=1).all())
    assert all(text.count(encoder.tokenizer.mask_token) == 1 for text in masked)
