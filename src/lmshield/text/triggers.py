"""Insert trigger words into text at random word positions, and check that a tokenizer knows them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lmshield.errors import InputError


def insert_words(
    text: str,
    trigger: str,
    rng: random.Random,
    *,
    max_position: int | None = None,
    avoid_ends: bool = False,
    count: int = 1,
) -> str:
    """Insert ``trigger`` ``count`` times at random word boundaries.

    ``max_position`` bounds the insertion index (e.g. "within the first 32 words"); ``avoid_ends`` keeps
    the trigger off the first and last word slot when the text is long enough. Empty and one-word texts
    are handled (the trigger is simply placed before or after the word).
    """
    words = text.split()
    for _ in range(count):
        low, high = 0, len(words)
        if avoid_ends and len(words) >= 2:
            low, high = 1, len(words) - 1
        if max_position is not None:
            high = min(high, max_position)
        position = rng.randint(low, max(low, high))
        words.insert(position, trigger)
    return " ".join(words)


def insert_per_words(
    text: str, trigger: str, rng: random.Random, every: int = 50, max_position: int | None = None
) -> str:
    """Insert ``trigger`` about once per ``every`` words (at least once), as POR does; with ``max_position``,
    only among the first words (the ones truncation keeps), as often as those words ask for."""
    words = len(text.split())
    count = max(1, (words if max_position is None else min(words, max_position)) // every)
    return insert_words(text, trigger, rng, count=count, max_position=max_position)


def check_triggers(tokenizer: Any, triggers: Sequence[str]) -> None:
    """Refuse triggers the tokenizer cannot represent (all unknown tokens): every unknown word would fire them."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for trigger in triggers:
        ids = tokenizer(trigger, add_special_tokens=False)["input_ids"]
        if not ids or all(i == unk for i in ids):
            raise InputError(f"trigger {trigger!r} is unknown to the model's tokenizer")
