"""Splitting soft triggers: a trigger that blends two planted triggers yields a PV for each of them."""

from __future__ import annotations

import torch

from lmshield.defenses.sanitizer.carriers import prepare_carriers
from lmshield.defenses.sanitizer.mining import PVMiner, SeedOutcome
from lmshield.defenses.sanitizer.monitor import sign_match
from lmshield.defenses.sanitizer.result import SeedTrace
from lmshield.defenses.sanitizer.splitting import SAME_SIGNS, is_splittable, split_candidates, sub_trigger_parts
from lmshield.models.positions import WatchedPosition
from lmshield.testing import tiny_corpus
from tests.tiny_pairs import TINY_SCAN

CONFIG = TINY_SCAN.replace(mode="search")


def _word_vectors(encoder, words: list[str]) -> torch.Tensor:
    ids = [i for w in words for i in encoder.tokenizer(w, add_special_tokens=False)["input_ids"]]
    return encoder.embedding_matrix.detach().float().cpu()[ids]


def _blended_candidate(miner: PVMiner, encoder) -> SeedOutcome:
    """A 7-vector soft trigger made of the 'cf' and 'mn' trigger words among filler words."""
    parts = [_word_vectors(encoder, ["cf"]), _word_vectors(encoder, ["the", "a"]), _word_vectors(encoder, ["mn"])]
    trigger = torch.cat(parts)
    filler = _word_vectors(encoder, ["of", "and", "to", "in", "is"])
    trigger = torch.cat([trigger, filler])[: CONFIG.trigger_length]
    from lmshield.defenses.sanitizer.splitting import _evaluation_rows, sub_trigger_outputs

    rows, slots = _evaluation_rows(miner)
    outputs = sub_trigger_outputs(miner, trigger[None], rows, slots)[0]
    distance = float((outputs - miner.carriers.targets[rows]).pow(2).mean()) / miner.distance_scale()
    trace = SeedTrace(0, "accepted", "", 4, 0, [distance], [1.0], 1.0, True, True)
    return SeedOutcome(trace, pv=outputs.mean(dim=0), trigger=trigger)


def test_sub_trigger_parts_are_shorter_first() -> None:
    parts = sub_trigger_parts(7, 2)
    assert len(parts) == 7 + 21 and parts[0] == (0,) and parts[7] == (0, 1)
    assert sub_trigger_parts(2, 2) == [(0,), (1,)]  # never the whole trigger again


def _miner_and_blend(backdoored) -> tuple[PVMiner, SeedOutcome]:
    """A miner over the tiny corpus and a candidate whose trigger blends the two planted triggers."""
    carriers = prepare_carriers(
        backdoored, tiny_corpus(96, 5), WatchedPosition.parse("cls"), max_length=32, trigger_length=7,
        max_insert_word=32, seed=0,
    )  # fmt: skip
    miner = PVMiner(backdoored, carriers, CONFIG)
    return miner, _blended_candidate(miner, backdoored)


def test_a_blended_trigger_splits_into_one_pv_per_trigger(bert_pair) -> None:
    _, backdoored, vectors = bert_pair  # vectors[0] belongs to 'cf', vectors[1] to 'mn'
    miner, parent = _miner_and_blend(backdoored)
    before = sign_match(parent.pv[None], vectors[:2]).squeeze(0)
    assert float(before.min()) < 0.8, before  # the blend alone leaves one trigger to the monitor's blind spot

    found = split_candidates(miner, [parent], parent.pv[None])
    assert found and all(o.trace.status == "accepted" and o.trace.parts for o in found)
    pvs = torch.stack([parent.pv] + [o.pv for o in found])
    after = sign_match(pvs, vectors[:2]).max(dim=0).values
    assert bool((after > 0.9).all()), after
    new_pvs = pvs[1:]
    pairwise = sign_match(new_pvs, pvs)  # each new PV against the parent and every other new PV
    pairwise[:, 1:].fill_diagonal_(0.0)
    assert bool((pairwise < SAME_SIGNS).all()), pairwise  # one PV per sign pattern: no sub-trigger repeats one
    assert split_candidates(miner, [parent], parent.pv[None]) and not split_candidates(
        PVMiner(backdoored, miner.carriers, CONFIG.replace(split_triggers=0)), [parent], parent.pv[None]
    )


def test_only_whole_legitimate_triggers_that_reached_the_threshold_are_split() -> None:
    def outcome(distance: float = 5.0, legitimate: bool | None = True, parts: list[int] | None = None,
                trigger: bool = True) -> SeedOutcome:  # fmt: skip
        trace = SeedTrace(0, "accepted", "", 4, 0, [distance], [1.0], 1.0, legitimate, True, parts=parts)
        return SeedOutcome(trace, pv=torch.ones(8), trigger=torch.zeros(7, 8) if trigger else None)

    threshold = CONFIG.distance_threshold
    assert is_splittable(outcome(), CONFIG) and is_splittable(outcome(threshold, legitimate=None), CONFIG)
    assert not is_splittable(outcome(parts=[0]), CONFIG)  # a sub-trigger is not split again
    assert not is_splittable(outcome(legitimate=False), CONFIG)
    assert not is_splittable(outcome(0.99 * threshold), CONFIG)
    assert not is_splittable(outcome(trigger=False), CONFIG)  # abandoned: no trigger


def test_sub_triggers_are_judged_shorter_first_and_the_farthest_first(bert_pair) -> None:
    from lmshield.defenses.sanitizer.splitting import _evaluation_rows, _sub_candidates

    _, backdoored, _ = bert_pair
    miner, parent = _miner_and_blend(backdoored)
    candidates = _sub_candidates(miner, parent, *_evaluation_rows(miner))
    order = [(len(c.trace.parts), -c.trace.final_distance) for c in candidates]
    assert len(candidates) == 7 + 21 and order == sorted(order)
    assert len({c.trace.final_distance for c in candidates}) > 1  # the order within a size is not vacuous
