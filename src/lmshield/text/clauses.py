"""Clauses of a text: the pieces PSIM's ``span="clauses"`` reading scores on their own."""

from __future__ import annotations

import re

# a clause ends at , ; : . ! or ? followed by white space (SST-2's " , " spacing included), or at their full-width
# forms, which Chinese and Japanese text follows with no space
_CLAUSE_END = re.compile(r"(?<=[,;:.!?])\s+|(?<=[，、；：。！？])\s*")


def split_clauses(text: str, max_words: int | None = None) -> list[str]:
    """``text``'s clauses, in order, each with its closing punctuation; only those that start within the first
    ``max_words`` words (a model that reads no further would never see the rest of the text either)."""
    clauses, start = [], 0
    for piece in _CLAUSE_END.split(text.strip()):
        if max_words is not None and start >= max_words:
            break
        if piece.strip():
            clauses.append(piece)
        start += len(piece.split())
    return clauses


def clause_views(texts: list[str], max_words: int | None = None) -> tuple[list[str], list[int]]:
    """Every text whole, followed by its clauses when it has more than one; and for each view the index of
    the text it came from."""
    views, owners = [], []
    for index, text in enumerate(texts):
        clauses = split_clauses(text, max_words)
        parts = [text, *clauses] if len(clauses) > 1 else [text]
        views.extend(parts)
        owners.extend([index] * len(parts))
    return views, owners
