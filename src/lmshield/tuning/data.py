"""Labelled text for tuning: JSON Lines, a JSON array, CSV/TSV, or a Hugging Face dataset id."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from lmshield.errors import InputError
from lmshield.models.loading import looks_like_path
from lmshield.text.inputs import as_texts
from lmshield.text.sources import RECORD_SUFFIXES, find_text_field, load_dataset_split, read_records, text_value

LABEL_FIELD = "label"
MAX_CLASSES = 10_000
TEXT_SUFFIXES = (".txt", ".text", ".parquet", ".arrow", ".gz", ".zip")  # paths, never hub ids


@dataclass(frozen=True)
class LabelledData:
    """Texts with integer labels in ``range(len(label_names))``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        texts = as_texts(self.texts)
        if isinstance(self.labels, str | bytes):
            raise InputError("expected a list of labels, got one string")
        try:
            labels = list(self.labels)
        except TypeError:
            raise InputError(f"expected a list of labels, got {type(self.labels).__name__}") from None
        for index, label in enumerate(labels):  # numpy integers are Integral too; "1" or 1.0 is no class index
            if isinstance(label, bool) or not isinstance(label, Integral):
                raise InputError(f"labels must be whole-number class indices: label {index} is {label!r}")
        names = as_texts(self.label_names, what="label names")
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "labels", [int(label) for label in labels])
        object.__setattr__(self, "label_names", names)
        if len(self.texts) != len(self.labels):
            raise InputError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        bad = [label for label in self.labels if not 0 <= label < len(self.label_names)]
        if bad:
            raise InputError(f"label {bad[0]} outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def take(self, indices: list[int]) -> LabelledData:
        return LabelledData([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names)

    def head(self, count: int | None) -> LabelledData:
        """The first ``count`` examples (all when ``None``)."""
        if count is not None and count < 1:
            raise InputError(f"a limit must be at least 1, got {count}")
        return self if count is None else self.take(list(range(min(count, len(self)))))

    def split(self, fraction: float, seed: int = 0) -> tuple[LabelledData, LabelledData]:
        """A seeded (rest, held-out) split; the held-out part gets ``fraction`` of the examples (>= 1)."""
        if len(self) < 2:
            raise InputError("need at least 2 examples to hold out a dev split")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        held = max(1, round(fraction * len(self)))
        return self.take(sorted(order[held:])), self.take(sorted(order[:held]))


def read_labelled(
    source: str | Path,
    *,
    text_field: str | None = None,
    label_field: str = LABEL_FIELD,
    label_names: list[str] | None = None,
    split: str = "train",
) -> LabelledData:
    """Read labelled texts from a file (``.jsonl``/``.json``/``.csv``/``.tsv``) or a dataset id.

    The text field defaults to the first of ``lmshield.text.sources.TEXT_FIELDS`` present. Integer
    labels are kept as they are (names ``"0"``, ``"1"``, ...); other labels are mapped to indices in
    sorted order. Pass ``label_names`` (the training set's) to read a dev or test file with the same
    mapping.
    """
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{source}: a folder, not a file of labelled records")
    records = read_records(path) if path.exists() else _read_dataset(str(source), split)
    if not records:
        raise InputError(f"{source}: no records")
    key = find_text_field(list(records[0]), text_field, source)
    if label_field not in records[0]:
        raise InputError(f"{source}: no label field {label_field!r}; fields: {', '.join(map(str, records[0]))}")
    texts, raw = [], []
    for number, record in enumerate(records, start=1):
        if record.get(key) is None or record.get(label_field) in (None, ""):
            raise InputError(f"{source}: record {number} lacks {key!r} or {label_field!r}")
        texts.append(text_value(record[key], source, number))
        raw.append(known_label(record[label_field], label_names, source, number))
    names, labels = _index_labels(raw, label_names, str(source))
    return LabelledData(texts, labels, names)


def known_label(value: Any, names: list[str] | None, source: str | Path, number: int) -> str:
    """:func:`label_text`, except that a spelling ``names`` holds as it is stays that name: a classifier saved
    before 1 and 1.0 were one label keeps names such as ``"1.0"`` and ``"2.0"``, and ``"1.0"`` read as ``"1"``
    would be the class index 1, its ``"2.0"``."""
    spelt = str(value).strip()
    return spelt if names is not None and spelt in names else label_text(value, source, number)


def label_text(value: Any, source: str | Path, number: int) -> str:
    """A record's label as the text it is known by: a whole number in any spelling (1, 1.0, "1.0", "01") as
    ``"1"``, so that one class is not read as two; a fraction, NaN or an object is refused."""
    if isinstance(value, dict | list):
        raise InputError(f"{source}: record {number} holds a {type(value).__name__} where a label should be")
    if isinstance(value, float) and not value.is_integer():
        raise InputError(f"{source}: record {number} has label {value}; labels name classes, not scores")
    text = str(value).strip()
    whole = re.fullmatch(r"(-?[0-9]+)(\.0*)?", text)
    return str(int(whole[1])) if whole else text


def _index_labels(as_text: list[str], names: list[str] | None, source: str) -> tuple[list[str], list[int]]:
    if names is None:
        if all(_is_int(label) for label in as_text):
            top = max(int(label) for label in as_text)
            if min(int(label) for label in as_text) < 0:
                raise InputError(f"{source}: negative integer labels")
            if top >= MAX_CLASSES:
                raise InputError(f"{source}: integer labels are class indices; {top} is beyond {MAX_CLASSES - 1}")
            names = [str(i) for i in range(top + 1)]
        else:
            names = sorted(set(as_text))
    if len(names) < 2:
        raise InputError(f"{source}: a classifier needs at least 2 labels, found {names}")
    lookup = {name: index for index, name in enumerate(names)}
    # integer labels that are not names are read as indices into the names (e.g. 0/1 files for neg/pos)
    lookup |= {str(index): index for index in range(len(names)) if str(index) not in lookup}
    unknown = sorted({label for label in as_text if label not in lookup})
    if unknown:
        raise InputError(f"{source}: labels {unknown[:5]} not among the training labels {names}")
    return list(names), [lookup[label] for label in as_text]


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", text) is not None


def _names_a_file(name: str) -> bool:
    """Whether ``name`` reads as a file path rather than a hub dataset id (``name`` or ``owner/name``): a path
    as a model name would be (see :func:`lmshield.models.loading.looks_like_path`), a backslash, or a file suffix."""
    return looks_like_path(name) or "\\" in name or Path(name).suffix.lower() in (*RECORD_SUFFIXES, *TEXT_SUFFIXES)


def _read_dataset(name: str, split: str) -> list[dict[str, Any]]:
    if _names_a_file(name):
        raise InputError(f"{name}: no such file")
    return [dict(row) for row in load_dataset_split(name, split)]
