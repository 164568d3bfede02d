"""Run zoo tasks one after another in this process, or as Ray tasks (local Ray or an existing cluster).

A task is a top-level function of one JSON-like argument that writes its own results to disk, so a run
that stops half-way resumes by skipping what is finished. Results come back in the order of the items.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from lmshield.errors import InputError, check_whole

EXECUTORS = ("sequential", "ray")
_WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE")


def _single_threaded(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one task with one torch thread (several Ray tasks share the machine's cores)."""
    import torch

    torch.set_num_threads(1)
    return fn(item)


def check_executor(executor: str, address: str | None = None, num_cpus: int | None = None) -> None:
    """Refuse an unknown executor, and Ray's options without Ray, before any work."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}: use sequential or ray")
    if executor != "ray" and (address is not None or num_cpus is not None):
        raise InputError("--address and --num-cpus go with --executor ray")
    if num_cpus is not None:
        check_whole({"--num-cpus": num_cpus})


def run_tasks(
    fn: Callable[[Any], Any],
    items: list[Any],
    *,
    executor: str = "sequential",
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    desc: str = "tasks",
) -> list[Any]:
    """``[fn(item) for item in items]``, sequentially or as Ray tasks (``executor='ray'``)."""
    check_executor(executor, address, num_cpus)
    if executor == "sequential":
        return [fn(item) for item in tqdm(items, desc=desc, disable=not progress)]
    return _run_ray(fn, items, address=address, num_cpus=num_cpus, progress=progress, desc=desc)


def _run_ray(
    fn: Callable[[Any], Any], items: list[Any], *, address: str | None, num_cpus: int | None, progress: bool, desc: str
) -> list[Any]:
    try:
        import ray
    except ImportError as exc:
        raise InputError("--executor ray needs Ray: pip install 'lmshield[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.update({k: os.environ[k] for k in _WORKER_ENV if k in os.environ})
        options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
        if address is None:
            options.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
        try:
            ray.init(address=address, **options)
        except Exception as exc:  # connection errors come in several classes
            raise InputError(f"cannot start or reach Ray ({address or 'local'}): {exc}") from exc
    try:
        task = ray.remote(num_cpus=1)(_single_threaded)
        refs = [task.remote(fn, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        with tqdm(total=len(refs), desc=f"{desc} (ray)", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[index[ref]] = ray.get(ref)
                    bar.update(1)
        return results
    finally:
        if started_here:
            ray.shutdown()
