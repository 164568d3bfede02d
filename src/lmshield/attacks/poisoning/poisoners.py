"""Trigger insertion for each poisoning attack: config -> poisoner -> triggered texts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lmshield.attacks.poisoning.config import PoisonConfig
from lmshield.attacks.poisoning.paraphrase import Paraphraser
from lmshield.text.triggers import insert_words


class Poisoner:
    """Turns clean texts into triggered ones; every random choice comes from ``rng``."""

    def poison(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        raise NotImplementedError


@dataclass
class WordPoisoner(Poisoner):
    """Insert one word drawn from ``words`` (or one fixed sentence) at random positions; ``avoid_ends``: never
    first or last (BadNet; InSent's sentence goes anywhere)."""

    words: tuple[str, ...]
    insertions: int = 1
    avoid_ends: bool = True

    def poison(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        out = []
        for text in texts:
            for _ in range(self.insertions):
                text = insert_words(text, rng.choice(self.words), rng, avoid_ends=self.avoid_ends)
            out.append(text)
        return out


@dataclass
class ParaphrasePoisoner(Poisoner):
    """Rewrite every text with a paraphraser (the syntactic trigger)."""

    paraphraser: Paraphraser

    def poison(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        return self.paraphraser.paraphrase(list(texts))


def make_poisoner(config: PoisonConfig, paraphraser: Paraphraser | None = None, device: str | None = None) -> Poisoner:
    """The poisoner of ``config``'s attack (its :meth:`PoisonConfig.poisoner`); ``paraphraser`` overrides a
    paraphrasing attack's own choice."""
    return config.poisoner(paraphraser, device)
