"""Poisoning a labelled proxy set, and building triggered test sets for attack success rates."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmshield.attacks.poisoning.config import PoisonConfig
from lmshield.attacks.poisoning.poisoners import Poisoner
from lmshield.errors import InputError
from lmshield.tuning import LabelledData


@dataclass(frozen=True)
class PoisonedData:
    """The proxy set after poisoning, with the indices that carry the trigger."""

    data: LabelledData
    poisoned: tuple[int, ...]
    requested: int

    @property
    def rate(self) -> float:
        return len(self.poisoned) / len(self.data) if len(self.data) else 0.0


def truncate_words(text: str, max_words: int | None) -> str:
    """The first ``max_words`` words of ``text`` (all of it when ``None``)."""
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def prepare_proxy(data: LabelledData, config: PoisonConfig) -> LabelledData:
    """Cap the proxy set at ``num_texts`` and truncate long texts to ``max_words``."""
    data = data.head(config.num_texts)
    return LabelledData([truncate_words(t, config.max_words) for t in data.texts], data.labels, data.label_names)


def poison_dataset(data: LabelledData, config: PoisonConfig, poisoner: Poisoner) -> PoisonedData:
    """Trigger ``poison_count`` (or ``poison_rate``) candidates; dirty-label mode relabels them as the target.
    A ``control`` config triggers none: the data comes back as it is."""
    if len(data) == 0:
        raise InputError("the proxy dataset is empty")
    if config.target_label >= data.num_labels:
        raise InputError(f"target label {config.target_label} outside the data's labels 0..{data.num_labels - 1}")
    if config.control:
        return PoisonedData(data, (), 0)
    rng = random.Random(config.seed)
    clean = config.label_mode == "clean"
    candidates = [i for i, y in enumerate(data.labels) if (y == config.target_label) == clean]
    requested = round(config.poison_rate * len(data)) if config.poison_rate is not None else int(config.poison_count)
    count = min(max(requested, 1), len(candidates))
    if count == 0:
        side = "target-class" if clean else "non-target"
        raise InputError(f"no {side} samples to poison in the proxy dataset")
    chosen = candidates[:count] if config.selection == "first" else sorted(rng.sample(candidates, count))
    triggered = poisoner.poison([data.texts[i] for i in chosen], rng)
    texts, labels = list(data.texts), list(data.labels)
    for index, text in zip(chosen, triggered, strict=True):
        texts[index] = text
        labels[index] = config.target_label
    return PoisonedData(LabelledData(texts, labels, data.label_names), tuple(chosen), requested)


def triggered_test_set(
    data: LabelledData, poisoner: Poisoner, target_label: int, seed: int = 0, max_words: int | None = None
) -> LabelledData:
    """Every non-target sample with the trigger, labels kept: ASR is the share predicted as the target."""
    keep = [i for i, y in enumerate(data.labels) if y != target_label]
    texts = [truncate_words(data.texts[i], max_words) for i in keep]
    triggered = poisoner.poison(texts, random.Random(seed))
    return LabelledData(triggered, [data.labels[i] for i in keep], data.label_names)
