"""One job per output folder: a lock file that a second run started on the same folder finds and refuses.

Two runs of a resumable job on one folder (a double launch, two cluster jobs) each took the other's half-finished
progress for their own and wrote over each other's files. A job now holds its folder while it runs: it creates
``.lmshield.lock`` there (``O_EXCL``: only one process can) holding its process id, host and start, and removes it
when it ends, by an error or Ctrl-C too. A lock whose process is gone (killed, on this host) is taken over, and so
is one whose process id now names another process (Linux: the lock records the boot and the process's start,
so a reboot or a reused id is told apart); one from another host cannot be checked, so the refusal names the
file to delete when that run is over. A process may
take a folder it already holds again (a command, then the library function it calls).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from lmshield.errors import InputError

LOCK_FILE = ".lmshield.lock"

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)
_held: dict[Path, int] = {}  # folders this process holds, with how many times it took each


@contextmanager
def holding(folder: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """Hold ``folder`` (created if need be) for this process while the block runs; :class:`InputError` when
    another live process holds it. The folders this call created are removed again if the block leaves them empty.
    ``None`` holds nothing (a job that writes no folder)."""
    if folder is None:
        yield None
        return
    path = Path(folder)
    created = [place for place in (path, *path.parents) if not place.exists()]  # innermost first
    path.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    try:
        if key not in _held:
            _acquire(path / LOCK_FILE)
        _held[key] = _held.get(key, 0) + 1
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield path
    finally:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]
            (path / LOCK_FILE).unlink(missing_ok=True)
            _remove_if_empty(created)


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders of ``created`` (innermost first) that nothing was written into."""
    for folder in created:
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()


def holds(parameter: str) -> Callable[[F], F]:
    """Decorator: the function holds (see :func:`holding`) the folder its argument ``parameter`` names, when given."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with holding(signature.bind(*args, **kwargs).arguments.get(parameter)):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _acquire(lock: Path) -> None:
    """Create ``lock`` for this process, taking over one whose process is gone; else refuse, naming its holder."""
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if not _is_stale(holder):
                raise InputError(_refusal(lock, holder)) from None
            logger.warning("%s: taking over the lock of %s, which is no longer running", lock.parent, _who(holder))
            _remove_stale(lock, holder)
            continue
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(_me(), file)
        except BaseException:  # a full disk: an empty lock would refuse every later run
            lock.unlink(missing_ok=True)
            raise
        return
    raise InputError(_refusal(lock, _holder(lock)))


def _remove_stale(lock: Path, holder: dict[str, Any] | None) -> None:
    """Remove ``lock`` if it is still the stale one of ``holder``: two runs that found it stale at once must not
    both take over, the second deleting the fresh lock of the first. It is moved aside first (one run only can),
    and put back when another run's lock had replaced it meanwhile."""
    aside = lock.with_name(f"{lock.name}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:  # another run took it over first
        return
    if _holder(aside) == holder:
        aside.unlink()
        return
    try:
        os.link(aside, lock)  # the other run's lock, back in place
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        os.rename(aside, lock)
        return
    aside.unlink()


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([_program(), *sys.argv[1:]])[:300],
        "boot": _boot_id(),
        "process_start": _process_start(os.getpid()),
    }


def _boot_id() -> str | None:
    """This boot's id (Linux), or ``None``: no process of an earlier boot is still running."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or ``None``: a process id that names a
    process started at another time belongs to a later process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22; the name before it may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _holder(lock: Path) -> dict[str, Any] | None:
    """What the lock says of its holder, or ``None`` when it cannot be read (being written, or not a lock)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """Whether the holder is a process of this host that is gone (a lock of this very process id that this process
    does not hold was left by an earlier process: containers reuse process ids), left before a reboot, or whose
    id now names a process that started at another time."""
    if holder is None or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid() or not _alive(pid):
        return True
    boot, started = holder.get("boot"), holder.get("process_start")
    if isinstance(boot, str) and (now := _boot_id()) is not None and boot != now:
        return True
    return isinstance(started, int) and (now_started := _process_start(pid)) is not None and started != now_started


def _alive(pid: int) -> bool:
    if os.name == "nt":  # signal 0 means Ctrl-C there: assume alive, the refusal says what to delete
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _who(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process"
    return f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"


def _refusal(lock: Path, holder: dict[str, Any] | None) -> str:
    command = f": {holder['command']}" if holder and holder.get("command") else ""
    return (
        f"{lock.parent} is in use by another lmshield run, {_who(holder)}{command}; wait for it to finish, "
        f"or delete {lock} if that run is no longer going"
    )


def _program() -> str:
    name = Path(sys.argv[0]).name if sys.argv else ""
    return "lmshield" if name in ("__main__.py", "lmshield") else name or "python"
