"""Progress files: identities carry the version, writes are atomic, other identities and damage are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmshield import __version__
from lmshield.errors import InputError
from lmshield.progress import read_progress, stamp, write_json


def test_stamp_adds_the_version_and_takes_the_json_form() -> None:
    assert stamp({"seeds": (1, 2), "model": "m"}) == {"seeds": [1, 2], "model": "m", "lmshield": __version__}


def test_progress_round_trips_and_leaves_no_partial_file(tmp_path: Path) -> None:
    identity = stamp({"model": "m"})
    path = tmp_path / "job" / "progress.json"
    write_json(path, {"identity": identity, "done": [1]})
    write_json(path, {"identity": identity, "done": [1, 2]})
    assert read_progress(path, identity, "a job")["done"] == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]


def test_other_identities_and_damaged_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    write_json(path, {"identity": stamp({"model": "m"})})
    with pytest.raises(InputError, match=r"progress of a job with another model.*--fresh"):
        read_progress(path, stamp({"model": "other"}), "a job")
    for damaged in ("{", "[1, 2]", "\udcff"):
        path.write_text(damaged, encoding="utf-8", errors="surrogateescape")
        with pytest.raises(InputError, match="--fresh"):
            read_progress(path, stamp({"model": "m"}), "a job")
