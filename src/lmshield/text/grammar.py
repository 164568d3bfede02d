"""A small English grammar that generates carrier sentences with no data at all.

The sentences are plain and varied enough for a word-level trigger to be inserted anywhere, which is all
PV mining and the task-agnostic attacks need from their carrier text.
"""

from __future__ import annotations

import random

_WORDS = {
    "det": "the a this that every one some another my our their his her".split(),
    "adj": (
        "small large old young quiet loud bright dark warm cold happy sad quick slow strange simple modern "
        "ancient local foreign green red blue heavy light early late busy empty rich poor famous hidden gentle "
        "angry careful honest"
    ).split(),
    "noun": (
        "city river teacher student doctor farmer market garden window village company report engineer artist "
        "country road school train letter question story song house museum table mountain forest computer "
        "child family friend dog bird ship island library kitchen council scientist player team bridge camera "
        "painting book problem idea"
    ).split(),
    "verb": (
        "visited described built found painted opened watched followed carried changed studied reached helped "
        "answered moved wrote bought sold cleaned discovered remembered designed closed joined repaired explained"
    ).split(),
    "intransitive": "arrived waited smiled laughed slept worked returned grew fell travelled".split(),
    "adverb": "quickly slowly carefully quietly suddenly often rarely finally together early".split(),
    "prep": "near behind under across beside inside after before around without".split(),
    "time": ["yesterday", "today", "last week", "in the morning", "at night", "during the summer", "after lunch"],
    "conj": "and but because while although when".split(),
}

_CLAUSES = (
    "det adj noun verb det noun",
    "det noun verb det adj noun prep det noun",
    "det noun intransitive adverb",
    "det adj noun intransitive prep det noun",
    "det noun adverb verb det noun",
    "det noun verb det noun time",
)


def _clause(rng: random.Random) -> str:
    words = [rng.choice(_WORDS[slot]) for slot in rng.choice(_CLAUSES).split()]
    return " ".join(words)


def grammar_sentences(count: int, seed: int = 0, max_clauses: int = 3) -> list[str]:
    """``count`` sentences of 1 to ``max_clauses`` clauses joined by conjunctions."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        clauses = [_clause(rng) for _ in range(rng.randint(1, max_clauses))]
        text = clauses[0]
        for clause in clauses[1:]:
            text += f" {rng.choice(_WORDS['conj'])} {clause}"
        sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def vocabulary_sentences(tokenizer: object, count: int, seed: int = 0, length: tuple[int, int] = (8, 24)) -> list[str]:
    """Sentences of random whole words drawn from a tokenizer's own vocabulary."""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words = sorted(
        token.lstrip("Ġ▁")
        for token in vocab
        if token not in special and token.lstrip("Ġ▁").isalpha() and len(token.lstrip("Ġ▁")) >= 3
    )
    if not words:
        raise ValueError("the tokenizer's vocabulary has no whole words to build sentences from")
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(*length))) for _ in range(count)]
