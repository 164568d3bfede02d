"""Input purging (LMSanitator), batched: try every single-word deletion of a flagged input at once.

The release deletes words one at a time from the left and re-runs the model after each. Here every
deletion candidate of every flagged input (each distinct word removed wherever it occurs) goes through
the model in shared batches. A candidate the monitor no longer flags ends the search (the one furthest
from every PV wins, ties to the leftmost word); when none clears, the candidate closest to clearing is
kept and the search goes on greedily from it, for multi-word triggers, up to ``max_removed`` words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmshield.defenses.sanitizer.monitor import MonitorResult

# evaluate(texts) -> (logits (N, C), monitor result over the same forward pass)
Evaluate = Callable[[list[str]], tuple[torch.Tensor, MonitorResult]]
# reach(texts) -> how many leading characters of each text the model reads (truncation cuts the rest)
Reach = Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class PurgeOutcome:
    """What purging did to one flagged input."""

    text: str  # the last variant evaluated (the purged text when cleaned)
    removed: tuple[str, ...]
    cleaned: bool
    logits: torch.Tensor | None  # logits of ``text``; None when no variant could be evaluated
    match: float  # highest sign-match share of ``text`` with any PV
    candidates: int  # variants evaluated for this input


def word_deletions(text: str, reach: int | None = None) -> list[tuple[str, str]]:
    """``(word, text without every occurrence of word)`` for each distinct word, in order of appearance.

    A deletion that would leave nothing is no candidate: an input made only of the flagged words is refused,
    not answered as an empty text. With ``reach``, only words that start within the first ``reach``
    characters (those the model reads) are candidates: deleting a word it never sees changes nothing, and a
    long text would otherwise cost a forward pass per distinct word.
    """
    words = text.split()
    seen = words if reach is None else [m.group() for m in re.finditer(r"\S+", text) if m.start() < reach]
    variants = [(word, " ".join(w for w in words if w != word)) for word in dict.fromkeys(seen)]
    return [(word, variant) for word, variant in variants if variant]


def _reaches(texts: list[str], reach: Reach | None) -> list[int | None]:
    return [None] * len(texts) if reach is None else list(reach(texts))


def purge(texts: list[str], evaluate: Evaluate, max_removed: int = 3, reach: Reach | None = None) -> list[PurgeOutcome]:
    """Purge flagged ``texts``: batched single-word deletions, then greedy for multi-word triggers; ``reach``
    limits the candidates to the words the model reads (see :func:`word_deletions`)."""
    current = list(texts)
    removed: list[list[str]] = [[] for _ in texts]
    last: list[tuple[torch.Tensor | None, float]] = [(None, 1.0) for _ in texts]
    counts = [0] * len(texts)
    done: dict[int, PurgeOutcome] = {}
    active = list(range(len(texts)))
    for _ in range(max(0, max_removed)):
        limits = _reaches([current[i] for i in active], reach)
        jobs = [
            (i, word, variant)
            for i, limit in zip(active, limits, strict=True)
            for word, variant in word_deletions(current[i], limit)
        ]
        if not jobs:
            break
        logits, monitored = evaluate([variant for _, _, variant in jobs])
        by_input: dict[int, list[int]] = {}
        for job, (i, _, _) in enumerate(jobs):
            by_input.setdefault(i, []).append(job)
        for i, rows in by_input.items():
            counts[i] += len(rows)
            clear = [j for j in rows if not bool(monitored.flagged[j])]
            pick = min(clear or rows, key=lambda j: float(monitored.match[j]))  # min keeps the leftmost on ties
            _, word, variant = jobs[pick]
            current[i] = variant
            removed[i].append(word)
            last[i] = (logits[pick], float(monitored.match[pick]))
            if clear:
                done[i] = PurgeOutcome(variant, tuple(removed[i]), True, logits[pick], last[i][1], counts[i])
        active = [i for i in active if i not in done]
        if not active:
            break
    for i in active:
        done[i] = PurgeOutcome(current[i], tuple(removed[i]), False, last[i][0], last[i][1], counts[i])
    return [done[i] for i in range(len(texts))]


def sequential_purge(
    texts: list[str], evaluate: Evaluate, max_removed: int = 1, reach: Reach | None = None
) -> list[PurgeOutcome]:
    """The release's purge, kept as a reference: delete one word at a time from the left, one forward each.

    Each variant is the input without every occurrence of one word; the first variant the monitor no
    longer flags wins. Costs up to (trigger position + 1) forward passes per input and finds single-word
    triggers only (``max_removed`` is accepted for a common signature and ignored).
    """
    del max_removed
    outcomes = []
    for text, limit in zip(texts, _reaches(texts, reach), strict=True):
        match, tried = 1.0, 0
        for tried, (word, variant) in enumerate(word_deletions(text, limit), start=1):
            logits, monitored = evaluate([variant])
            match = float(monitored.match[0])
            if not bool(monitored.flagged[0]):
                outcomes.append(PurgeOutcome(variant, (word,), True, logits[0], match, tried))
                break
        else:
            outcomes.append(PurgeOutcome(text, (), False, None, match, tried))
    return outcomes


PURGE_STRATEGIES: dict[str, Callable[[list[str], Evaluate, int, Reach | None], list[PurgeOutcome]]] = {
    "batched": purge,
    "sequential": sequential_purge,
}
