"""One job per output folder: a second run on a folder in use is refused; a lock whose process is gone is not."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmshield import locks
from lmshield.errors import EXIT_ERROR, InputError
from lmshield.locks import LOCK_FILE, holding
from tests.cli.helpers import invoke, said


def held_by(folder: Path, pid: int, host: str | None = None, **more: object) -> Path:
    """``folder`` with a lock of process ``pid`` on ``host`` (this one by default), as another run leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01 00:00:00", "command": "x"}
    (folder / LOCK_FILE).write_text(json.dumps(holder | more))
    return folder / LOCK_FILE


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_in_use_is_refused_naming_its_holder(tmp_path: Path) -> None:
    lock = held_by(tmp_path / "out", os.getppid())  # a live process: the one that started the tests
    refusal = rf"in use by another lmshield run, process {os.getppid()} on .*delete"
    with pytest.raises(InputError, match=refusal), holding(tmp_path / "out"):
        pass
    assert json.loads(lock.read_text())["pid"] == os.getppid()  # the holder keeps its lock
    held_by(tmp_path / "far", 1, host="another-host")  # whether it runs cannot be told from here
    with pytest.raises(InputError, match="on another-host"), holding(tmp_path / "far"):
        pass


def test_a_lock_is_released_at_the_end_on_an_error_and_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with holding(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        with holding(out):  # the command, then the library function it calls
            pass
        assert (out / LOCK_FILE).is_file()
        (out / "result").write_text("kept")
    assert not (out / LOCK_FILE).exists()
    for error in (KeyboardInterrupt(), InputError("bad")):
        with pytest.raises(type(error)), holding(out):
            raise error
        assert [p.name for p in out.iterdir()] == ["result"]


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"), holding(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_made_for_a_job_that_wrote_nothing_is_removed(tmp_path: Path) -> None:
    with pytest.raises(InputError), holding(tmp_path / "new" / "out"):
        raise InputError("refused before any work")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    for pid in (dead_pid(), os.getpid()):  # this very id, not held here: left by an earlier process (a container)
        held_by(tmp_path, pid)
        with holding(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_two_runs_taking_over_one_stale_lock_do_not_both_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the dead holder; the first took over, and the second then deleted the first's fresh lock and
    made its own: two runs on one folder, the double launch the lock is there to refuse."""
    held_by(tmp_path, dead_pid())
    is_stale = locks._is_stale

    def first_takes_over_meanwhile(holder: dict | None) -> bool:
        stale = is_stale(holder)
        held_by(tmp_path, os.getppid())  # the other run's lock, made between this run's read and its removal
        return stale

    monkeypatch.setattr(locks, "_is_stale", first_takes_over_meanwhile)
    with pytest.raises(InputError, match=f"process {os.getppid()} "), holding(tmp_path):
        pass
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getppid()
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_a_second_command_on_a_folder_in_use_says_so_and_leaves_it_alone(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """Two scans on one folder resumed from each other's half-written progress, deleted each other's tensor
    files and died on each other's temporary files; the second is now refused in one line."""
    out = tmp_path / "scan"
    lock = held_by(out, os.getppid())
    (out / "progress.json").write_text("the first run's")
    result = invoke("scan", tiny_bert_dir, "--out", out, "--preset", "fast", "--quiet")
    assert result.exit_code == EXIT_ERROR and "is in use by another lmshield run" in said(result), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (out / "progress.json").read_text() == "the first run's" and lock.is_file()


def test_sigterm_releases_the_lock(tmp_path: Path) -> None:
    """A cluster cancels a job with SIGTERM, which killed it on the spot with its lock left behind."""
    script = (
        "import sys, time\n"
        "from lmshield.cli.main import interrupt_on_sigterm\n"
        "from lmshield.locks import holding\n"
        "interrupt_on_sigterm()\n"
        "try:\n"
        "    with holding(sys.argv[1]):\n"
        "        print('held', flush=True)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stdout.readline().strip() == b"held"
    assert (tmp_path / LOCK_FILE).is_file()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 130
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.skipif(locks._boot_id() is None or locks._process_start(os.getppid()) is None, reason="needs Linux /proc")
def test_a_lock_left_before_a_reboot_or_by_a_reused_process_id_is_taken_over(tmp_path: Path) -> None:
    """The live process that started the tests stands in for an unrelated process given the holder's old id."""
    live, boot, started = os.getppid(), locks._boot_id(), locks._process_start(os.getppid())
    for other in ({"boot": "an-earlier-boot", "process_start": started}, {"boot": boot, "process_start": started + 1}):
        held_by(tmp_path, live, **other)
        with holding(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    held_by(tmp_path, live, boot=boot, process_start=started)  # that very process, still running: refused
    with pytest.raises(InputError, match=f"process {live} "), holding(tmp_path):
        pass
    with holding(tmp_path / "mine"):  # what a lock records of its own process
        mine = json.loads((tmp_path / "mine" / LOCK_FILE).read_text())
    assert mine["boot"] == boot and mine["process_start"] == locks._process_start(os.getpid())
