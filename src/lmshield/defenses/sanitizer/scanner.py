"""``scan``: load carriers, mine PVs seed group by seed group, decide, checkpoint and resume."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmshield.defenses.sanitizer.carriers import prepare_carriers
from lmshield.defenses.sanitizer.config import SanitizerConfig
from lmshield.defenses.sanitizer.mining import PVMiner, SeedOutcome, judge, nearest_tokens
from lmshield.defenses.sanitizer.result import SCAN_JSON, ScanResult, SeedTrace
from lmshield.defenses.sanitizer.splitting import split_candidates
from lmshield.devices import resolve_device
from lmshield.errors import InputError
from lmshield.locks import holding
from lmshield.models.encoder import Encoder, evaluating
from lmshield.models.loading import load_encoder
from lmshield.models.positions import WatchedPosition
from lmshield.progress import (
    FRESH_HINT,
    PROGRESS_JSON,
    SEALED_FILES,
    atomic_write,
    content_digest,
    read_progress,
    refuse_links,
    stamp,
    write_progress,
)
from lmshield.text.inputs import as_texts
from lmshield.text.sources import TextSource

logger = logging.getLogger(__name__)

PROGRESS_TENSORS = "progress*.safetensors"  # progress-<token>.safetensors, named in progress.json


class _Checkpoint:
    """Finished seeds of an interrupted scan, stored beside the result so a rerun resumes."""

    def __init__(self, directory: Path | None, identity: dict[str, Any]) -> None:
        self.directory = directory
        self.identity = stamp(identity)

    def load(
        self, fresh: bool, first_seed: int, pv_shape: tuple[int, ...], trigger_shape: tuple[int, ...]
    ) -> list[SeedOutcome]:
        """The finished seeds (``first_seed`` onwards, in order), each checked: a known status, finite distances,
        and for an accepted seed a finite PV of ``pv_shape`` and trigger of ``trigger_shape``."""
        if self.directory is None or not (self.directory / PROGRESS_JSON).is_file():
            return []
        if fresh:
            self.clear()
            return []
        saved = read_progress(self.directory / PROGRESS_JSON, self.identity, "a scan")
        try:
            tensors = load_file(str(self.directory / saved[SEALED_FILES][0])) if saved["outcomes"] else {}
            outcomes = []
            for number, item in enumerate(saved["outcomes"]):
                pv, trigger = tensors.get(f"pv.{number}"), tensors.get(f"trigger.{number}")
                outcome = SeedOutcome(SeedTrace(**item), pv=pv, trigger=trigger)
                _check_outcome(outcome, first_seed + number, pv_shape, trigger_shape)
                outcomes.append(outcome)
        except (OSError, KeyError, IndexError, TypeError, ValueError, SafetensorError) as exc:
            raise InputError(f"{self.directory}: damaged scan progress ({exc}); {FRESH_HINT}") from exc
        return outcomes

    def save(self, outcomes: list[SeedOutcome]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for number, outcome in enumerate(outcomes):
            if outcome.pv is not None and outcome.trigger is not None:
                tensors[f"pv.{number}"] = outcome.pv.contiguous()
                tensors[f"trigger.{number}"] = outcome.trigger.contiguous()
        # a new tensor file each time, named by the sealed JSON written after it: interrupted anywhere, the
        # folder keeps a JSON and the tensors it names
        name = f"progress-{secrets.token_hex(4)}.safetensors"
        atomic_write(self.directory / name, lambda p: save_file(tensors, str(p)))
        payload = {"identity": self.identity, "outcomes": [vars(o.trace) for o in outcomes]}
        write_progress(self.directory / PROGRESS_JSON, payload, files=(name,))
        self._remove_tensors(keep=name)

    def clear(self) -> None:
        if self.directory is None:
            return
        (self.directory / PROGRESS_JSON).unlink(missing_ok=True)
        self._remove_tensors()

    def _remove_tensors(self, keep: str | None = None) -> None:
        assert self.directory is not None
        for path in self.directory.glob(PROGRESS_TENSORS):
            if path.name != keep:
                path.unlink()


def _check_outcome(outcome: SeedOutcome, seed: int, pv_shape: tuple[int, ...], trigger_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` for a saved seed this scan could not have written."""
    trace = outcome.trace
    if trace.seed != seed:
        raise ValueError(f"seed {trace.seed!r} where seed {seed} was expected")
    trace.check()
    if trace.status != "accepted":
        return
    for name, tensor, shape in (("PV", outcome.pv, pv_shape), ("trigger", outcome.trigger, trigger_shape)):
        if tensor is None or tuple(tensor.shape) != shape or not bool(tensor.isfinite().all()):
            raise ValueError(f"seed {seed}: its {name} is missing, not of shape {shape}, or not finite")


def _accepted_pvs(outcomes: list[SeedOutcome], hidden_size: int) -> torch.Tensor:
    pvs = [o.pv for o in outcomes if o.trace.status == "accepted" and o.pv is not None]
    return torch.stack(pvs) if pvs else torch.empty(0, hidden_size)


def _check_same_model(out_dir: str | os.PathLike[str] | None, fingerprint: str) -> None:
    """Refuse an ``out_dir`` that holds another model's finished scan: ``fresh`` discards progress, not results."""
    saved = Path(out_dir) / SCAN_JSON if out_dir is not None else None
    if saved is None or not saved.is_file():
        return
    try:
        model = json.loads(saved.read_text(encoding="utf-8")).get("model", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # not readable as a scan: refuse_foreign and the progress check deal with it
    if isinstance(model, dict) and model.get("fingerprint") not in (None, fingerprint):
        raise InputError(
            f"{out_dir} holds the scan of another model ({model.get('source')}); choose another --out for this one"
        )


def check_outside(out_dir: str | os.PathLike[str] | None, model_dir: str | os.PathLike[str] | None) -> None:
    """Refuse an output folder inside the scanned model's: the model is untrusted, and a folder it ships could
    hold a forged result or progress that a rerun would resume from."""
    if out_dir is None or model_dir is None:
        return
    out, model = Path(out_dir).resolve(), Path(model_dir).resolve()
    if out == model or model in out.parents:
        raise InputError(
            f"{out_dir} lies inside the scanned model's folder {model_dir}, which the model controls; "
            "choose an output folder outside it (--out)"
        )


def _score(traces: list[SeedTrace]) -> float:
    """Continuous backdoor score: the largest final distance reached by a legitimate trigger."""
    return max((t.final_distance for t in traces if t.legitimate is not False), default=0.0)


def scan(
    model: Encoder | str | os.PathLike[str] | None = None,
    config: SanitizerConfig | None = None,
    *,
    position: str | int | None = None,
    texts: list[str] | None = None,
    text_source: TextSource | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    fresh: bool = False,
) -> ScanResult:
    """Scan an encoder for a task-agnostic backdoor with LMSanitator PV mining.

    ``model`` is a loaded :class:`Encoder`, a path or hub id, or ``None`` for the embedded MiniLM-L6.
    Carrier text is ``texts`` when given, else ``text_source`` (data-free grammar by default). With
    ``out_dir``, finished seeds are checkpointed and a rerun resumes; the result is saved there too.
    """
    started = time.perf_counter()
    config = config or SanitizerConfig()
    if not isinstance(config, SanitizerConfig):
        raise InputError(f"config must be a SanitizerConfig, got {type(config).__name__}")
    encoder = model if isinstance(model, Encoder) else load_encoder(model, device=device, allow_pickle=allow_pickle)
    if isinstance(model, Encoder) and device is not None:  # a loaded encoder runs where the caller asks
        encoder.model.to(resolve_device(device))
    check_outside(out_dir, encoder.directory)  # before the lock is written there
    if out_dir is not None:
        refuse_links(Path(out_dir))
    with evaluating(encoder.model), holding(out_dir):  # train mode's dropout would make seeds random
        return _scan(encoder, config, position, texts, text_source, out_dir, progress, fresh, started)


def _scan(
    encoder: Encoder,
    config: SanitizerConfig,
    position: str | int | None,
    texts: list[str] | None,
    text_source: TextSource | None,
    out_dir: str | os.PathLike[str] | None,
    progress: bool,
    fresh: bool,
    started: float,
) -> ScanResult:
    """:func:`scan` of a loaded encoder in eval mode."""
    _check_same_model(out_dir, encoder.fingerprint)
    if encoder.max_positions is not None and config.max_length > encoder.max_positions:
        raise InputError(
            f"max_length {config.max_length} is longer than the {encoder.max_positions} positions the model holds"
        )
    watched = WatchedPosition.parse(position, default=str(encoder.default_position()))
    source = text_source or TextSource()
    given_texts = texts is not None
    texts = (
        as_texts(texts, what="carrier texts")
        if given_texts
        else source.load(config.num_carriers, seed=config.seed, tokenizer=encoder.tokenizer)
    )
    texts = texts[: config.num_carriers]
    if len(texts) < config.batch_size:
        raise InputError(f"{len(texts)} carrier texts are fewer than one batch ({config.batch_size})")
    carriers = prepare_carriers(
        encoder,
        texts,
        watched,
        max_length=config.max_length,
        trigger_length=config.trigger_length,
        max_insert_word=config.max_insert_word,
        seed=config.seed,
    )
    prepared = time.perf_counter()
    miner = PVMiner(encoder, carriers, config)
    identity = {
        "fingerprint": encoder.fingerprint,
        "settings": config.search_fingerprint(),
        "position": str(watched),
        "texts": f"{len(texts)} given texts" if given_texts else source.describe(),
        "texts_digest": content_digest(texts),
    }
    checkpoint = _Checkpoint(Path(out_dir) if out_dir else None, identity)
    trigger_shape = (config.trigger_length, encoder.embedding_size)
    outcomes = checkpoint.load(fresh, config.seed, (encoder.hidden_size,), trigger_shape)
    resumed = len(outcomes)
    if outcomes:
        logger.info("resuming: %d seed(s) already finished", len(outcomes))
    all_seeds = list(range(config.seed, config.seed + config.max_seeds))
    scale = miner.distance_scale()

    def done() -> bool:
        found = any(o.trace.status == "accepted" for o in outcomes)
        return (config.mode == "detect" and found) or len(outcomes) >= len(all_seeds)

    if len(outcomes) > len(all_seeds):
        # an earlier run with more seeds: keep only the groups a fresh scan of these seeds runs whole (a shorter
        # last group runs again), or seeds beyond --max-seeds would decide the verdict
        outcomes = outcomes[: len(all_seeds) // config.group_size * config.group_size]
        resumed = len(outcomes)
    whole = len(outcomes) // config.group_size * config.group_size
    if not done() and whole < len(outcomes):
        # a part of a group, from an earlier run with fewer seeds: run that group whole, so every seed gives
        # what a fresh scan gives (seeds of one group share their random carrier draws)
        outcomes = outcomes[:whole]
        resumed = whole

    while not done():
        group = all_seeds[len(outcomes) : len(outcomes) + config.group_size]
        known = _accepted_pvs(outcomes, encoder.hidden_size)
        for outcome in miner.run_group(group, known, progress=progress):
            judge(outcome, _accepted_pvs(outcomes, encoder.hidden_size), config, scale)
            outcomes.append(outcome)
        checkpoint.save(outcomes)

    if config.mode == "search":
        outcomes = outcomes + split_candidates(miner, outcomes, _accepted_pvs(outcomes, encoder.hidden_size))
    result = _build_result(encoder, miner, outcomes, watched, None if given_texts else source, len(texts))
    result.timings = {
        "prepare_s": prepared - started,
        "mining_s": time.perf_counter() - prepared,
        "total_s": time.perf_counter() - started,
        "steps": float(sum(o.trace.steps for o in outcomes)),
        "batches": float(miner.batches),
        "resumed_seeds": float(resumed),
    }
    if out_dir is not None:
        result.save_pretrained(out_dir)
    return result


def _build_result(
    encoder: Encoder,
    miner: PVMiner,
    outcomes: list[SeedOutcome],
    watched: WatchedPosition,
    source: TextSource | None,
    num_texts: int,
) -> ScanResult:
    config = miner.config
    accepted = [o for o in outcomes if o.trace.status == "accepted"]
    for index, outcome in enumerate(accepted):
        outcome.trace.pv_index = index
    hidden, length, width = encoder.hidden_size, config.trigger_length, encoder.embedding_size
    pvs = torch.stack([o.pv for o in accepted]) if accepted else torch.empty(0, hidden)
    triggers = torch.stack([o.trigger for o in accepted]) if accepted else torch.empty(0, length, width)
    return ScanResult(
        verdict="backdoored" if accepted else "clean",
        score=_score([o.trace for o in outcomes]),
        pvs=pvs,
        triggers=triggers,
        nearest_tokens=[  # where each vector moved from its start: the vectors themselves stay near the start
            nearest_tokens(encoder, o.trigger.cpu() - miner.initial_trigger(o.trace.seed), config.nearest_tokens)
            for o in accepted
        ],
        trace=[o.trace for o in outcomes],
        config=config,
        model={
            "source": encoder.source,
            "model_type": encoder.model_type,
            "fingerprint": encoder.fingerprint,
            "hidden_size": hidden,
            "embedding_size": width,
        },
        position=str(watched),
        text_source=source.describe() if source else f"{num_texts} given texts",
        spread=miner.carriers.spread,
    )
