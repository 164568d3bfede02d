"""The vectorised pieces of PV mining against slow, obviously-correct versions."""

from __future__ import annotations

import math

import pytest
import torch

from lmshield.defenses.sanitizer import SanitizerConfig, scan
from lmshield.defenses.sanitizer.carriers import insert_soft_triggers, insertion_slots, prepare_carriers
from lmshield.defenses.sanitizer.mining import PVMiner, entropy_across_batch, nearest_tokens
from lmshield.defenses.sanitizer.monitor import sign_consistency, sign_match
from lmshield.models.positions import WatchedPosition
from lmshield.testing import tiny_corpus, tiny_encoder
from tests.tiny_pairs import TINY_SCAN

# two steps of 32 carriers per epoch on a random tiny BERT: the tests below watch the schedule, not the search
SMALL = SanitizerConfig(num_carriers=64, epochs=2, abandon_after_epoch=1, lr=2e-3)


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


def test_the_end_slot_counts_as_a_word_position() -> None:
    # [CLS] w0 w1 w2 w3 [SEP]: the end slot 5 is insertion position 4, inside max_word 5 but not max_word 4
    word_ids = torch.tensor([[-1, 0, 1, 2, 3, -1]])
    mask = torch.ones_like(word_ids)
    slots, counts = insertion_slots(word_ids, mask, max_word=4)
    assert slots[0, : counts[0]].tolist() == [1, 2, 3, 4]
    slots, counts = insertion_slots(word_ids, mask, max_word=5)
    assert slots[0, : counts[0]].tolist() == [1, 2, 3, 4, 5]


def test_collapse_entropy_reaches_its_ceiling_only_when_outputs_collapse():
    collapsed = torch.ones(1, 32, 8)
    spread = torch.randn(1, 32, 8) * 5
    assert math.isclose(float(entropy_across_batch(collapsed)), math.log(32), rel_tol=1e-6)
    assert float(entropy_across_batch(spread)) < math.log(32) - 0.5


def test_sign_agreement_counts_matching_signs():
    outputs = torch.tensor([[1.0, -2.0, 3.0, -4.0], [1.0, 1.0, 1.0, 1.0]])
    vectors = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert sign_match(outputs, vectors).squeeze(1).tolist() == [1.0, 0.5]


def test_sign_consistency_is_the_share_of_outputs_the_monitor_would_flag() -> None:
    outputs = torch.ones(4, 10)
    outputs[1, :2] = -1.0  # 0.8 of the signs: not above the monitor's 0.8
    outputs[2, :1] = -1.0  # 0.9
    outputs[3] = -1.0  # none
    assert sign_consistency(outputs, torch.ones(10)) == 0.5


def test_mask_tokens_survive_truncation():
    from lmshield.defenses.sanitizer.carriers import add_mask_tokens
    from lmshield.testing import tiny_encoder

    encoder = tiny_encoder("bert")
    long_texts = [" ".join(["the old dog watched a river"] * 8)] * 20
    masked = add_mask_tokens(encoder, long_texts, token_budget=12, seed=0)
    ids = encoder.tokenize(masked, 12)["input_ids"]
    assert bool((ids == encoder.mask_token_id).any(dim=1).all())
    assert all(text.count(encoder.tokenizer.mask_token) == 1 for text in masked)


def _tiny_miner(config: SanitizerConfig, position: str = "cls") -> PVMiner:
    """A miner on 64 carriers of a random tiny BERT."""
    encoder = tiny_encoder("bert")
    carriers = prepare_carriers(
        encoder, tiny_corpus(63, 0), WatchedPosition.parse(position), max_length=32,
        trigger_length=config.trigger_length, max_insert_word=config.max_insert_word, seed=0,
    )  # fmt: skip
    return PVMiner(encoder, carriers, config)


@pytest.mark.parametrize("position", ["cls", "last"])
def test_a_soft_trigger_of_word_embeddings_acts_like_the_inserted_words(position: str) -> None:
    """The embeddings of real tokens inserted at a word slot give the watched output of the text that holds
    those tokens there; at the end slot the 'last' token moves behind the trigger."""
    miner = _tiny_miner(SMALL.replace(trigger_length=2), position)
    encoder, carriers = miner.encoder, miner.carriers
    trigger_ids = torch.tensor(encoder.tokenizer("cf mn", add_special_tokens=False)["input_ids"][:2])
    rows = torch.arange(6)
    slot = torch.stack([carriers.slot_counts[rows] - 1, torch.zeros(6, dtype=torch.long)])  # end slot, first word
    with torch.no_grad():
        got = miner.triggered_outputs(encoder.embedding_matrix[trigger_ids].expand(2, -1, -1), rows, slot)
        for s in range(2):
            for row in rows.tolist():
                ids = carriers.input_ids[row, : int(carriers.attention_mask[row].sum())]
                at = int(carriers.slots[row, slot[s, row]])
                inserted = torch.cat([ids[:at], trigger_ids, ids[at:]])[None]
                hidden = encoder.hidden_states(encoder.embed(inserted), torch.ones_like(inserted))[0]
                expected = hidden[0 if position == "cls" else inserted.shape[1] - 1]
                assert torch.allclose(got[s, row], expected, atol=1e-5), (s, row)


def test_seeds_far_from_a_backdoor_are_abandoned_after_the_set_epoch() -> None:
    miner = _tiny_miner(SMALL.replace(epochs=3, abandon_threshold=1e6, distance_threshold=1e6))
    outcomes = miner.run_group([0, 1], torch.empty(0, 32), progress=False)
    assert [(o.trace.status, o.trace.epochs, o.pv) for o in outcomes] == [("abandoned", 1, None)] * 2
    assert outcomes[0].trace.reason.startswith("distance") and "after epoch 1" in outcomes[0].trace.reason


def test_a_candidate_refines_until_its_distance_plateaus() -> None:
    """Search mode refines a seed past the search epochs while its distance still grows by the plateau share;
    detect mode stops at the search epochs."""
    config = SMALL.replace(mode="search", distance_threshold=1e-9, abandon_threshold=1e-9, refine_epochs=3)
    known = torch.empty(0, 32)

    def epochs(**changes: object) -> int:
        outcome = _tiny_miner(config.replace(**changes)).run_group([0], known, progress=False)[0]
        assert outcome.trace.status == "candidate" and outcome.pv is not None
        return outcome.trace.epochs

    assert epochs(refine_plateau=1e6) == 2 + 1  # the first refine epoch grows by less than the plateau
    assert epochs(refine_plateau=-1e6) == 2 + 3  # every gain counts as growth: refines to the last epoch
    assert epochs(mode="detect") == 2


@pytest.fixture
def one_thread():
    """Bitwise comparisons of two runs: a CPU's parallel sums need not add up in the same order twice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_refining_uses_its_own_step_size(one_thread) -> None:
    """Once boosting ends, a refining seed steps ``refine_lr_factor`` x the learning rate."""
    config = SMALL.replace(
        mode="search", distance_threshold=1e-9, abandon_threshold=1e-9, refine_epochs=1, refine_plateau=-1e6,
        boost_until_grad=1e-12,
    )  # fmt: skip
    known = torch.empty(0, 32)
    triggers = [
        _tiny_miner(config.replace(refine_lr_factor=factor)).run_group([0], known, progress=False)[0].trigger
        for factor in (1.0, 1.0, 50.0)
    ]
    assert torch.equal(triggers[0], triggers[1])
    assert not torch.allclose(triggers[0], triggers[2])


def test_the_spread_is_the_mean_squared_distance_between_two_clean_outputs() -> None:
    carriers = _tiny_miner(SMALL).carriers
    targets = carriers.targets
    pairs = (targets[:, None] - targets[None]).pow(2).mean(dim=-1)  # every ordered pair (itself: 0)
    assert carriers.spread == pytest.approx(float(pairs.mean()), rel=1e-4)


def test_nearest_tokens_compare_directions_not_lengths() -> None:
    encoder = tiny_encoder("bert")
    ids = [encoder.tokenizer.convert_tokens_to_ids(word) for word in ("cf", "mn", "qt")]
    matrix = encoder.embedding_matrix
    with torch.no_grad():
        matrix[ids[2]] = 10 * (matrix[ids[0]] + matrix[ids[1]])  # a long vector between 'cf' and 'mn'
    assert nearest_tokens(encoder, matrix[ids].detach(), 1) == [["cf"], ["mn"], ["qt"]]


def test_known_pvs_steer_the_search_through_the_repetition_loss(one_thread) -> None:
    config = SMALL.replace(epochs=1)
    known = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))

    def trigger(config: SanitizerConfig, known: torch.Tensor) -> torch.Tensor:
        outcome = _tiny_miner(config).run_group([0], known, progress=False)[0]
        assert outcome.trigger is not None
        return outcome.trigger

    alone = trigger(config, torch.empty(0, 32))
    assert torch.equal(trigger(config.replace(repetition_weight=0.0), known), alone)
    assert not torch.allclose(trigger(config, known), alone)


def test_detect_mode_stops_after_the_first_group_that_finds_a_pv(bert_pair) -> None:
    config = TINY_SCAN.replace(max_seeds=8)
    assert config.group_size == 4  # two groups of seeds to try
    result = scan(bert_pair[1], config, progress=False)
    assert result.is_backdoored
    assert [t.seed for t in result.trace] == [0, 1, 2, 3]  # the second group is never mined
