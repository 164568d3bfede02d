"""Paraphrase defenses from precomputed files: back-translation and SCPN (they cannot run offline here).

A task folder may hold ``test_back.json`` / ``test_spcn.json`` (the clean test set, paraphrased) and
``test_char_back.json`` / ``test_char_spcn.json`` (label-1 test sentences with the rare word ``mn``
inserted, then paraphrased). The victim classifies the paraphrased texts instead of the inputs: clean
accuracy comes from the first file, attack success from the second. The poisoned files only fit a BadNet
``mn`` attack whose target label is 0 (their sentences are the label-1 ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmshield.errors import InputError
from lmshield.text.sources import read_records

KINDS = {"back": "back-translation", "scpn": "SCPN paraphrase"}
_FILES = {"back": ("test_back.json", "test_char_back.json"), "scpn": ("test_spcn.json", "test_char_spcn.json")}


@dataclass(frozen=True)
class ParaphrasedSet:
    """Paraphrased clean test texts (with labels) and paraphrased triggered texts (with original labels)."""

    kind: str
    clean_texts: list[str]
    clean_labels: list[int]
    poisoned_texts: list[str]
    poisoned_labels: list[int]
    trigger: str = "mn"

    @property
    def trigger_kept(self) -> float:
        """Share of paraphrased triggered texts that still contain the trigger word."""
        kept = [self.trigger in text.lower().split() for text in self.poisoned_texts]
        return sum(kept) / len(kept) if kept else 0.0


def paraphrase_files(kind: str) -> tuple[str, str]:
    """The file names of one kind of paraphrase: (clean test set, triggered sentences)."""
    if kind not in _FILES:
        raise InputError(f"unknown paraphrase kind {kind!r}: use back or scpn")
    return _FILES[kind]


def load_paraphrased(task_dir: str | Path, kind: str = "back") -> ParaphrasedSet:
    """Read the precomputed paraphrases of ``task_dir``; checks that they match its ``test.json``."""
    folder = Path(task_dir)
    clean_file, poison_file = (folder / name for name in paraphrase_files(kind))
    for file in (clean_file, poison_file):
        if not file.is_file():
            raise InputError(f"{folder}: no precomputed {KINDS[kind]} file {file.name}")
    clean = read_records(clean_file)
    poisoned = read_records(poison_file)
    test_file = folder / "test.json"
    if test_file.is_file():
        test = read_records(test_file)
        if len(test) != len(clean) or [r.get("label") for r in test] != [r.get("label") for r in clean]:
            raise InputError(f"{clean_file}: does not match {test_file} (length or labels differ)")
    return ParaphrasedSet(
        kind=kind,
        clean_texts=[str(r.get("sentence", "")) for r in clean],
        clean_labels=[int(r["label"]) for r in clean],
        poisoned_texts=[str(r.get("sentence", "")) for r in poisoned],
        poisoned_labels=[int(r["label"]) for r in poisoned],
    )
