"""Progress files: identities carry the version, writes are atomic, other identities and damage are refused."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lmshield import __version__
from lmshield.errors import InputError
from lmshield.progress import (
    atomic_write,
    identity_changes,
    progress_key,
    read_progress,
    refuse_finished,
    refuse_foreign_folder,
    refuse_links,
    stamp,
    write_output,
    write_progress,
)


def reseal(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit a progress file and seal it again, as if lmshield had written it so: for tests of the checks that
    stand behind the seal."""
    saved = json.loads(path.read_text())
    saved.pop("seal")
    files = tuple(saved.pop("sealed_files"))
    edit(saved)
    write_progress(path, saved, files=tuple(name for name in files if (path.parent / name).is_file()))


def test_stamp_adds_the_version_and_takes_the_json_form() -> None:
    assert stamp({"seeds": (1, 2), "model": "m"}) == {"seeds": [1, 2], "model": "m", "lmshield": __version__}


def test_progress_round_trips_and_leaves_no_partial_file(tmp_path: Path) -> None:
    identity = stamp({"model": "m"})
    path = tmp_path / "job" / "progress.json"
    write_progress(path, {"identity": identity, "done": [1]})
    write_progress(path, {"identity": identity, "done": [1, 2]})
    assert read_progress(path, identity, "a job")["done"] == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]


def test_two_writers_of_one_file_at_once_both_succeed(tmp_path: Path) -> None:
    """Every writer used the same temporary name (progress.json.tmp): when a second run wrote the file while the
    first was writing it (a double launch), one moved the other's temporary away and the other failed with
    'No such file or directory', or renamed a file still being written."""
    path = tmp_path / "progress.json"

    def first(temporary: Path) -> None:
        temporary.write_text("first")
        atomic_write(path, lambda other: other.write_text("second"))  # another process, in between

    atomic_write(path, first)
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_a_write_that_fails_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    """A full disk left the half-written temporary file beside the result."""
    path = tmp_path / "progress.json"
    path.write_text("old")

    def disk_full(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, disk_full)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_other_identities_and_damaged_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    write_progress(path, {"identity": stamp({"model": "m"})})
    with pytest.raises(InputError, match=r"progress of a job made with another model;.*--fresh"):
        read_progress(path, stamp({"model": "other"}), "a job")
    for damaged in ("{", "[1, 2]", "\udcff"):
        path.write_text(damaged, encoding="utf-8", errors="surrogateescape")
        with pytest.raises(InputError, match="--fresh"):
            read_progress(path, stamp({"model": "m"}), "a job")


def test_the_refusal_names_the_settings_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    write_progress(path, {"identity": stamp({"model": "m", "settings": {"lr": 0.1, "epochs": 2, "seed": 0}})})
    current = stamp({"model": "m", "settings": {"lr": 0.2, "epochs": 2, "seed": 1}})
    with pytest.raises(InputError, match=r"another settings\.lr, settings\.seed; use another"):
        read_progress(path, current, "a job")
    many = {f"k{i}": i for i in range(7)}
    assert identity_changes(many, {}) == ["k0", "k1", "k2", "k3", "3 more"]
    assert identity_changes({"a": [1]}, {"a": [1]}) == []
    assert identity_changes(1, 2) == ["identity"]


def test_progress_that_this_user_s_lmshield_did_not_write_is_refused(tmp_path: Path) -> None:
    """A model repository could ship progress where a scan writes by default: only sealed progress resumes."""
    identity = stamp({"model": "m"})
    path = tmp_path / "progress.json"
    (tmp_path / "tensors.safetensors").write_bytes(b"pv")
    write_progress(path, {"identity": identity, "done": [1]}, files=("tensors.safetensors",))
    assert read_progress(path, identity, "a job")["done"] == [1]
    sealed = json.loads(path.read_text())

    def refused(saved: dict, message: str = "lmshield did not write for this user") -> None:
        path.write_text(json.dumps(saved))
        with pytest.raises(InputError, match=f"{message}.*--fresh"):
            read_progress(path, identity, "a job")

    refused({k: v for k, v in sealed.items() if k != "seal"})  # forged: no seal
    refused({**sealed, "done": [1, 2]})  # edited after sealing
    refused({**sealed, "seal": "0" * 64})
    (tmp_path / "tensors.safetensors").write_bytes(b"other")  # the tensors changed under the JSON
    refused(sealed)
    for names in (["../outside"], ["/dev/zero"], "tensors.safetensors", ["missing.safetensors"]):
        refused({**sealed, "sealed_files": names}, "cannot be read")


def test_the_key_is_made_once_and_readable_by_its_user_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSHIELD_KEY_FILE", str(tmp_path / "keys" / "progress.key"))
    key = progress_key()
    assert len(key) == 32 and progress_key() == key
    assert stat.S_IMODE((tmp_path / "keys" / "progress.key").stat().st_mode) == 0o600
    path = tmp_path / "progress.json"
    write_progress(path, {"identity": stamp({})})
    monkeypatch.setenv("LMSHIELD_KEY_FILE", str(tmp_path / "another.key"))  # another user, or another machine
    with pytest.raises(InputError, match="did not write for this user"):
        read_progress(path, stamp({}), "a job")


def test_output_folders_refuse_users_files_and_finished_results(tmp_path: Path) -> None:
    """One rule for every job: a folder of someone else's files is refused, hidden files do not count, and a
    finished result is replaced only when asked."""
    out = tmp_path / "out"
    refuse_foreign_folder(out, "model", ("config.json",))  # a folder yet to be made
    out.mkdir()
    (out / ".gitkeep").write_text("")
    refuse_foreign_folder(out, "model", ("config.json",))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds no model.*choose a new --out$"):
        refuse_foreign_folder(out, "model", ("config.json",))
    with pytest.raises(InputError, match=r"choose a new --results$"):  # the option the command names it by
        refuse_foreign_folder(out, "results", ("settings.json",), option="--results")
    refuse_finished(out, "config.json", "model", overwrite=False)  # nothing finished yet
    (out / "config.json").write_text("{}")
    refuse_foreign_folder(out, "model", ("config.json",))
    with pytest.raises(InputError, match="already holds a model; pass --overwrite"):
        refuse_finished(out, "config.json", "model", overwrite=False)
    refuse_finished(out, "config.json", "model", overwrite=True)


def test_only_a_marker_file_marks_a_finished_result(tmp_path: Path) -> None:
    (tmp_path / "config.json").mkdir()  # a folder of that name holds no finished model
    refuse_finished(tmp_path, "config.json", "model", overwrite=False)


def test_output_folders_holding_a_symbolic_link_are_refused(tmp_path: Path) -> None:
    """A shipped result folder with report.md (or a model folder) linked to the user's files: the job would write
    through the link, or remove what it points at."""
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "progress.json").write_text("{}")
    refuse_foreign_folder(out, "scan", ("progress.json",))
    (out / "sub" / "report.md").symlink_to(precious)
    with pytest.raises(InputError, match=r"holds a symbolic link \(sub/report\.md\).*choose a new --results$"):
        refuse_foreign_folder(out, "scan", ("progress.json",), option="--results")
    with pytest.raises(InputError, match="symbolic link"):
        refuse_links(out)
    assert precious.read_text() == "mine"


def _read_into(pipe: Path, got: list[str]) -> None:
    got.append(pipe.read_text(encoding="utf-8"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_output_that_is_a_pipe_is_written_into_not_replaced(tmp_path: Path) -> None:
    """``predict --out``, ``psim score --out`` and ``guard eval --out`` moved a file over a FIFO (or /dev/stdout,
    as root) that the user named: the reader never got the lines, and the pipe was gone."""
    from lmshield.cli.guard import _write_jsonl

    pipe = tmp_path / "results"
    os.mkfifo(pipe)
    for write, expected in (
        (lambda: write_output(pipe, "one\n"), "one\n"),
        (lambda: _write_jsonl([{"y": 1}], pipe), '{"y": 1}\n'),
    ):
        got: list[str] = []
        reader = threading.Thread(target=_read_into, args=(pipe, got), daemon=True)
        reader.start()
        write()
        reader.join(timeout=30)
        assert got == [expected] and stat.S_ISFIFO(pipe.stat().st_mode)
    write_output(tmp_path / "file.jsonl", "whole\n")  # a file is still written whole
    assert (tmp_path / "file.jsonl").read_text() == "whole\n"
