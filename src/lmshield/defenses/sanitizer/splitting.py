"""Split soft triggers into shorter sub-triggers: one PV per planted vector instead of a blend of two.

A 7-vector soft trigger can combine pieces of two real triggers; the output it produces is then a blend
of two PVs that matches neither on 80 % of signs, so the monitor misses both. Real triggers are short
(one word or two), so after search mode every candidate that reached the distance threshold has its
sub-triggers of 1..``split_triggers`` vectors evaluated on a fixed set of carriers, a few batched forward
passes without gradients. A sub-trigger becomes a PV under exactly the rules a seed does (distance,
collapse, sign consistency), and counts as new when its sign pattern differs from every PV found so far.

On MiniLM-L6 with six POR triggers, the first vector alone of a soft trigger whose PV blended the
``mn`` and ``tq`` vectors (sign agreement 0.75 with each) moved [CLS] to ``mn``'s vector (agreement 0.90).
"""

from __future__ import annotations

import itertools

import torch

from lmshield.defenses.sanitizer.config import SanitizerConfig
from lmshield.defenses.sanitizer.mining import PVMiner, SeedOutcome, entropy_across_batch, judge
from lmshield.defenses.sanitizer.monitor import sign_consistency, sign_match
from lmshield.defenses.sanitizer.result import SeedTrace

CHUNK = 8  # sub-triggers per forward pass
SAME_SIGNS = 0.9  # a sub-PV whose signs agree with a known PV on this share of dimensions adds nothing


def closest_signs(pv: torch.Tensor, pvs: torch.Tensor) -> float:
    """Highest share of equal signs between ``pv`` and any of ``pvs`` (0 when there are none)."""
    return float(sign_match(pv[None], pvs).max()) if pvs.shape[0] else 0.0


def is_splittable(outcome: SeedOutcome, config: SanitizerConfig) -> bool:
    """A finished candidate (accepted, or rejected as a duplicate) that reached the distance threshold."""
    trace = outcome.trace
    return (
        outcome.trigger is not None
        and trace.parts is None
        and trace.legitimate is not False
        and trace.final_distance >= config.distance_threshold
    )


def sub_trigger_parts(length: int, max_parts: int) -> list[tuple[int, ...]]:
    """Index tuples of every sub-trigger of 1..``max_parts`` vectors (shorter first, in order)."""
    sizes = range(1, min(max_parts, length - 1) + 1)
    return [parts for size in sizes for parts in itertools.combinations(range(length), size)]


@torch.no_grad()
def sub_trigger_outputs(
    miner: PVMiner, triggers: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Watched outputs ``(S, B, H)`` of equal-length ``triggers`` ``(S, L, E)``, each inserted into carrier
    ``rows`` at the same word ``slots`` ``(B,)``, on the CPU."""
    return miner.triggered_outputs(triggers, rows, slots[None].expand(len(triggers), -1)).cpu()


def _evaluation_rows(miner: PVMiner) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed carriers (two batches, or all there are) and insertion slots, seeded by the config."""
    config, carriers = miner.config, miner.carriers
    generator = torch.Generator().manual_seed(config.seed + 104729)
    count = min(len(carriers), 2 * config.batch_size)
    rows = torch.randperm(len(carriers), generator=generator)[:count]
    slots = (torch.rand(count, generator=generator) * carriers.slot_counts[rows]).long()
    return rows, slots


def _sub_outcome(
    miner: PVMiner, parent: SeedOutcome, parts: tuple[int, ...], outputs: torch.Tensor, rows: torch.Tensor
) -> SeedOutcome:
    config = miner.config
    targets = miner.carriers.targets[rows]
    distance = float((outputs - targets).pow(2).mean()) / miner.distance_scale()
    whole = len(outputs) // config.batch_size * config.batch_size
    batches = outputs[:whole].reshape(-1, config.batch_size, outputs.shape[-1])
    collapse = float(entropy_across_batch(batches).mean()) / miner.entropy_ceiling
    pv = outputs.mean(dim=0)
    consistency = sign_consistency(outputs, pv)
    trace = SeedTrace(
        seed=parent.trace.seed,
        status="candidate",
        reason="",
        epochs=0,
        steps=0,
        distance=[distance],
        collapse=[collapse],
        sign_consistency=consistency,
        legitimate=True,
        parts=list(parts),
    )
    return SeedOutcome(trace, pv=pv, trigger=parent.trigger)


def _sub_candidates(miner: PVMiner, parent: SeedOutcome, rows: torch.Tensor, slots: torch.Tensor) -> list[SeedOutcome]:
    """Every sub-trigger of ``parent`` evaluated, shorter first and the farthest first among equals."""
    assert parent.trigger is not None
    parts_list = sub_trigger_parts(parent.trigger.shape[0], miner.config.split_triggers)
    candidates = []
    for size in sorted({len(p) for p in parts_list}):
        of_size = [p for p in parts_list if len(p) == size]
        for start in range(0, len(of_size), CHUNK):
            chunk = of_size[start : start + CHUNK]
            outputs = sub_trigger_outputs(miner, torch.stack([parent.trigger[list(p)] for p in chunk]), rows, slots)
            miner.batches += 1
            candidates += [_sub_outcome(miner, parent, p, o, rows) for p, o in zip(chunk, outputs, strict=True)]
    return sorted(candidates, key=lambda c: (len(c.trace.parts or ()), -c.trace.final_distance))


def _judge_sub(candidate: SeedOutcome, pool: torch.Tensor, miner: PVMiner) -> None:
    """The seed rules, with novelty measured in signs against ``pool``."""
    assert candidate.pv is not None
    trace = candidate.trace
    judge(candidate, torch.empty(0, pool.shape[1]), miner.config, miner.distance_scale())
    same = closest_signs(candidate.pv, pool)
    if trace.status == "accepted" and same >= SAME_SIGNS:
        trace.status, trace.unique = "rejected", False
        trace.reason = f"signs agree with a known PV on {same:.0%} of dimensions"
    elif trace.status == "accepted":
        trace.reason = f"sub-trigger {trace.parts} of seed {trace.seed}: {trace.reason}"


def split_candidates(miner: PVMiner, outcomes: list[SeedOutcome], known: torch.Tensor) -> list[SeedOutcome]:
    """Judge the sub-triggers of every splittable outcome; returns those accepted as new PVs.

    ``known``: PVs accepted so far. Shorter sub-triggers go first (the strongest first among equals). Each
    must pass the seed rules; instead of a distance between PVs, it is new when its signs differ on more
    than 10 % of dimensions from each known PV and each sub-PV accepted before it: the monitor reads signs,
    and a purer version of a blended PV is close to the blend in distance but not in signs.
    """
    config = miner.config
    if config.split_triggers < 1:
        return []
    rows, slots = _evaluation_rows(miner)
    found: list[SeedOutcome] = []
    for parent in (o for o in outcomes if is_splittable(o, config)):
        for candidate in _sub_candidates(miner, parent, rows, slots):
            accepted = [o.pv for o in found if o.pv is not None]
            _judge_sub(candidate, torch.cat([known, torch.stack(accepted)]) if accepted else known, miner)
            if candidate.trace.status == "accepted":
                found.append(candidate)
    return found
