"""ScanResult: the verdict of a scan with its evidence; saved as scan.json + pvs.safetensors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmshield.defenses.sanitizer.config import SanitizerConfig
from lmshield.errors import InputError
from lmshield.files import readable_as_umask
from lmshield.jsonio import check_format_version, unmark, write_marker_json
from lmshield.models.positions import WatchedPosition

SCAN_JSON = "scan.json"
PVS_FILE = "pvs.safetensors"
FORMAT_VERSION = 1
VERDICTS = ("backdoored", "clean")
SEED_STATUSES = ("accepted", "rejected", "abandoned")


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(data: object) -> None:
    """Raise ``TypeError`` for a scan.json whose fields have types no scan writes."""
    if not isinstance(data, dict):
        raise TypeError("scan.json is not a JSON object")
    wrong = [name for name in ("score", "spread") if not _finite_number(data.get(name))]
    wrong += [name for name in ("verdict", "position", "text_source") if not isinstance(data.get(name), str)]
    tokens = data.get("nearest_tokens")
    if not (
        isinstance(tokens, list)
        and all(
            isinstance(pv, list) and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in pv)
            for pv in tokens
        )
    ):
        wrong.append("nearest_tokens")
    if wrong:
        raise TypeError(f"{wrong[0]} has the wrong type ({data.get(wrong[0])!r})")


@dataclass
class SeedTrace:
    """What one seed of PV mining did and why it ended as it did."""

    seed: int
    status: str  # accepted | rejected | abandoned
    reason: str
    epochs: int
    steps: int
    distance: list[float]  # epoch means, in the config's distance scale
    collapse: list[float]  # epoch means of entropy / ln(batch size), 1.0 = fully collapsed
    sign_consistency: float | None = None  # share of final-epoch outputs whose signs match the PV >= 0.8
    legitimate: bool | None = None
    unique: bool | None = None
    pv_index: int | None = None
    seconds: float = 0.0  # from its group's start until it finished: a group's seeds run side by side (overlap)
    parts: list[int] | None = None  # a sub-trigger: which vectors of the seed's trigger (None: all)

    def check(self) -> None:
        """Raise ``ValueError`` for a trace no scan writes (read back from a file, it is input like any other)."""
        if self.status not in SEED_STATUSES:
            raise ValueError(f"seed {self.seed!r} with status {self.status!r}")
        counts = (self.seed, self.epochs, self.steps)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise ValueError(f"seed {self.seed!r}: seed, epochs and steps must be whole numbers >= 0")
        for series in (self.distance, self.collapse):
            if not isinstance(series, list) or not all(_finite_number(v) for v in series):
                raise ValueError(f"seed {self.seed}: distances that are not finite numbers")

    @property
    def final_distance(self) -> float:
        return self.distance[-1] if self.distance else 0.0

    @property
    def final_collapse(self) -> float:
        return self.collapse[-1] if self.collapse else 0.0


WORD_START_MARKERS = ("\u0120", "\u2581")  # byte-level BPE's "Ġ" (RoBERTa, GPT-2) and sentencepiece's "▁"


def readable_token(token: str) -> str:
    """A vocabulary token as a reader knows the word: without the marker that byte-level BPE and sentencepiece
    put before a word's first piece (``Ġmn``, ``▁mn`` read ``mn``; WordPiece's ``##`` continuations stay)."""
    stripped = token.lstrip("".join(WORD_START_MARKERS))
    return stripped or token


@dataclass
class ScanResult:
    """Verdict, continuous score and evidence (PVs, soft triggers, nearest tokens, per-seed trace)."""

    verdict: str  # "backdoored" | "clean"
    score: float
    pvs: torch.Tensor  # (K, hidden)
    triggers: torch.Tensor  # (K, trigger_length, embedding)
    nearest_tokens: list[list[list[str]]]  # (K, trigger_length, n) tokens nearest each trigger vector
    trace: list[SeedTrace]
    config: SanitizerConfig
    model: dict[str, Any]  # source, model_type, fingerprint, hidden_size, embedding_size
    position: str
    text_source: str
    spread: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def is_backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def num_pvs(self) -> int:
        return int(self.pvs.shape[0])

    @property
    def num_seeds(self) -> int:
        """Seeds tried (sub-triggers split from a seed's trigger are not seeds of their own)."""
        return sum(t.parts is None for t in self.trace)

    def trigger_parts(self, index: int) -> list[int]:
        """The vectors of PV ``index``'s soft trigger that make it: all of them, or a sub-trigger's few."""
        parts = next((t.parts for t in self.trace if t.pv_index == index), None)
        return list(parts) if parts else list(range(len(self.nearest_tokens[index])))

    def is_sub_trigger(self, index: int) -> bool:
        """Whether PV ``index`` comes from only some vectors of its seed's soft trigger."""
        return len(self.trigger_parts(index)) < len(self.nearest_tokens[index])

    def trigger_hint(self, index: int) -> str:
        """The vocabulary token nearest each vector of PV ``index``'s trigger (only its sub-trigger's vectors)."""
        hint = " ".join(readable_token(self.nearest_tokens[index][i][0]) for i in self.trigger_parts(index))
        return f"{hint} (sub-trigger)" if self.is_sub_trigger(index) else hint

    @property
    def caveat(self) -> str | None:
        """A warning that goes with the verdict, or ``None``."""
        if self.position == "mask" and self.is_backdoored:
            return (
                "a mask-position verdict is a lead, not a finding: [MASK] states vary little between sentences, "
                "which inflates the distance (a clean MiniLM-L6 crossed the threshold); scan cls too"
            )
        return None

    @property
    def past_threshold_note(self) -> str | None:
        """Why a clean verdict's score reached the distance threshold, or ``None``: the two read as a contradiction."""
        if self.is_backdoored or self.score < self.config.distance_threshold:
            return None
        return "the seeds that reached the threshold failed the collapse, sign-consistency or uniqueness check"

    def summary(self) -> str:
        seeds = self.num_seeds
        took = self.timings.get("total_s", 0.0)
        resumed = int(self.timings.get("resumed_seeds", 0))
        earlier = f" ({resumed} seed(s) from an earlier run)" if resumed else ""
        why = f"; {self.past_threshold_note} (see the trace)" if self.past_threshold_note else ""
        return (
            f"{self.verdict.upper()}: {self.num_pvs} predefined vector(s) found in {seeds} seed(s), "
            f"score {self.score:.3f} (threshold {self.config.distance_threshold}), {took:.1f} s{earlier}{why}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "verdict": self.verdict,
            "score": self.score,
            "num_pvs": self.num_pvs,
            "nearest_tokens": self.nearest_tokens,
            "trace": [dataclasses.asdict(t) for t in self.trace],
            "config": self.config.to_dict(),
            "model": self.model,
            "position": self.position,
            "text_source": self.text_source,
            "spread": self.spread,
            "timings": self.timings,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``scan.json`` and ``pvs.safetensors`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        unmark(out / SCAN_JSON)
        tensors = {"pvs": self.pvs.contiguous().float(), "triggers": self.triggers.contiguous().float()}
        save_file(tensors, str(out / PVS_FILE), metadata={"format": "lmshield-scan"})
        readable_as_umask(out)
        write_marker_json(out / SCAN_JSON, self.to_dict())
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ScanResult:
        """Load a result written by :meth:`save_pretrained`."""
        out = Path(directory)
        if not (out / SCAN_JSON).is_file() or not (out / PVS_FILE).is_file():
            raise InputError(f"{directory}: not a scan result (expected {SCAN_JSON} and {PVS_FILE})")
        try:
            data = json.loads((out / SCAN_JSON).read_text(encoding="utf-8"))
            check_format_version(data, FORMAT_VERSION, out / SCAN_JSON)
            tensors = load_file(str(out / PVS_FILE))
            _check_fields(data)
            result = cls(
                verdict=data["verdict"],
                score=float(data["score"]),
                pvs=tensors["pvs"],
                triggers=tensors["triggers"],
                nearest_tokens=data["nearest_tokens"],
                trace=[SeedTrace(**t) for t in data["trace"]],
                config=SanitizerConfig.from_dict(data["config"]),
                model=data["model"],
                position=data["position"],
                text_source=data["text_source"],
                spread=float(data["spread"]),
                timings=data.get("timings", {}),
            )
        except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError, SafetensorError) as exc:
            raise InputError(f"{directory}: unreadable scan result ({type(exc).__name__}: {exc})") from exc
        except InputError as exc:  # a setting out of range: say which file holds it
            raise InputError(f"{out / SCAN_JSON}: {exc}") from exc
        result._check_consistent(directory)
        return result

    def _check_consistent(self, directory: str | Path) -> None:
        if self.verdict not in VERDICTS:
            raise InputError(f"{directory}: unknown verdict {self.verdict!r} in {SCAN_JSON}")
        hidden = self.model.get("hidden_size") if isinstance(self.model, dict) else None
        if self.pvs.ndim != 2 or self.triggers.ndim != 3 or self.pvs.shape[0] != self.triggers.shape[0]:
            raise InputError(
                f"{directory}: {PVS_FILE} holds pvs {tuple(self.pvs.shape)} and triggers "
                f"{tuple(self.triggers.shape)}; expected (K, hidden) and (K, length, embedding)"
            )
        if hidden is not None and self.pvs.shape[0] and self.pvs.shape[1] != hidden:
            raise InputError(f"{directory}: PVs of size {self.pvs.shape[1]} for a model of hidden size {hidden}")
        if (self.verdict == "backdoored") != bool(self.pvs.shape[0]):
            raise InputError(f"{directory}: verdict {self.verdict!r} with {self.pvs.shape[0]} PV(s) in {PVS_FILE}")
        if not bool(self.pvs.isfinite().all()) or not bool(self.triggers.isfinite().all()):
            raise InputError(f"{directory}: {PVS_FILE} holds NaN or infinite values")
        if not (math.isfinite(self.score) and math.isfinite(self.spread) and self.spread > 0):
            raise InputError(f"{directory}: score {self.score} or spread {self.spread} in {SCAN_JSON} is not finite")
        if not isinstance(self.model, dict) or not isinstance(self.model.get("fingerprint"), str):
            raise InputError(f"{directory}: {SCAN_JSON} does not record the scanned model's fingerprint")
        try:
            for trace in self.trace:
                trace.check()
        except ValueError as exc:
            raise InputError(f"{directory}: {SCAN_JSON}: {exc}") from exc
        pv_indices = [t.pv_index for t in self.trace if t.status == "accepted"]  # each PV once, in order found
        if not all(isinstance(i, int) for i in pv_indices) or sorted(pv_indices) != list(range(self.num_pvs)):
            raise InputError(f"{directory}: {SCAN_JSON}: the accepted seeds' pv_index do not number its PVs")
        if not isinstance(self.nearest_tokens, list) or len(self.nearest_tokens) != self.num_pvs:
            raise InputError(
                f"{directory}: {SCAN_JSON}: nearest_tokens must list the tokens of each of the {self.num_pvs} PVs"
            )
        length = self.triggers.shape[1]
        for trace in self.trace:
            if trace.parts is not None and (
                not isinstance(trace.parts, list)
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < length for i in trace.parts)
            ):
                raise InputError(f"{directory}: {SCAN_JSON}: seed {trace.seed}'s parts are not vectors 0-{length - 1}")
        if not isinstance(self.timings, dict) or not all(_finite_number(v) for v in self.timings.values()):
            raise InputError(f"{directory}: {SCAN_JSON}: timings must map names to finite numbers")
        try:
            WatchedPosition.parse(self.position)
        except InputError as exc:
            raise InputError(f"{directory}: {SCAN_JSON}: {exc}") from exc
        if bool((self.pvs == 0).all(dim=1).any()):  # signs of all zeros: the monitor could match any output
            raise InputError(f"{directory}: {PVS_FILE} holds an all-zero PV, which says nothing of any output")
        if self.pvs.dtype != torch.float32 or self.triggers.dtype != torch.float32:
            raise InputError(f"{directory}: {PVS_FILE} must hold float32 tensors, got {self.pvs.dtype}")
        width = self.model.get("embedding_size")
        expected = (self.config.trigger_length, width if isinstance(width, int) else self.triggers.shape[2])
        if self.num_pvs and tuple(self.triggers.shape[1:]) != expected:
            raise InputError(
                f"{directory}: triggers of shape {tuple(self.triggers.shape[1:])} in {PVS_FILE}; the scan's settings "
                f"make {expected}"
            )
