"""Output monitoring (LMSanitator): flag an input whose watched output shares its sign pattern with a PV."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from lmshield.errors import InputError, check_finite

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.8
CALIBRATION_QUANTILE = 0.999
CALIBRATION_MARGIN = 0.03
CALIBRATION_CEILING = 0.97


def calibration_size(quantile: float) -> int:
    """Clean texts a calibration at ``quantile`` needs for the quantile to set aside at least one of them."""
    return 1 if quantile >= 1.0 else math.ceil(round(1.0 / (1.0 - quantile), 6))


def check_calibration(threshold: float, margin: float, quantile: float, ceiling: float) -> None:
    """Settings :meth:`Monitor.calibrated` can use: a finite ``margin`` >= 0 (NaN would set every raised
    threshold to NaN, which flags nothing), ``quantile`` in (0, 1], ``ceiling`` in [``threshold``, 1)."""
    check_finite({"margin": margin, "quantile": quantile, "ceiling": ceiling})
    if margin < 0:
        raise InputError(f"margin must be >= 0 (how far above clean matches a PV's threshold goes), got {margin}")
    if not 0.0 < quantile <= 1.0:
        raise InputError(f"quantile must be in (0, 1], got {quantile}")
    if not threshold <= ceiling < 1.0:
        raise InputError(f"ceiling must be in [{threshold}, 1), got {ceiling}")


def sign_match(outputs: torch.Tensor, pvs: torch.Tensor) -> torch.Tensor:
    """Share of dimensions whose signs agree, for every output/PV pair: ``(N, H), (K, H) -> (N, K)``.

    Computed with three matrix products over sign indicators (+, -, 0), so memory stays ``O(N K)``.
    """
    if outputs.shape[-1] != pvs.shape[-1]:
        raise InputError(f"outputs have {outputs.shape[-1]} dimensions but the PVs have {pvs.shape[-1]}")
    out_sign, pv_sign = torch.sign(outputs.float()), torch.sign(pvs.float().to(outputs.device))
    matches = sum((out_sign == s).float() @ (pv_sign == s).float().T for s in (1.0, -1.0, 0.0))
    return matches / outputs.shape[-1]


def sign_consistency(outputs: torch.Tensor, pv: torch.Tensor) -> float:
    """Share of ``outputs`` (N, H) that the monitor's default rule would flag against one ``pv`` (H,)."""
    return float((sign_match(outputs, pv[None]).squeeze(1) > DEFAULT_THRESHOLD).float().mean())


@dataclass(frozen=True)
class MonitorResult:
    """Per input: flagged, the highest sign-match share over the PVs, and which PV gave it (-1: none)."""

    flagged: torch.Tensor  # (N,) bool
    match: torch.Tensor  # (N,) float
    pv_index: torch.Tensor  # (N,) long


class Monitor:
    """Flags watched outputs whose share of matching signs with any PV exceeds that PV's threshold.

    Every PV starts at ``threshold`` (0.8, the paper's rule). :meth:`calibrated` raises the threshold of a
    PV that clean task inputs already come close to, just above a high quantile of their matches (capped),
    so a PV that happens to share its sign pattern with some clean outputs stops flagging them; the others
    keep the paper's threshold.
    """

    def __init__(
        self, pvs: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, thresholds: torch.Tensor | None = None
    ) -> None:
        if not isinstance(pvs, torch.Tensor) or not torch.is_floating_point(pvs):
            given = f"a {pvs.dtype} tensor" if isinstance(pvs, torch.Tensor) else type(pvs).__name__
            raise InputError(f"PVs must be a (K, hidden) float tensor, got {given}")
        if pvs.dim() != 2:
            raise InputError(f"PVs must be a (K, hidden) tensor, got shape {tuple(pvs.shape)}")
        if not bool(pvs.isfinite().all()):  # a NaN PV matches no sign: it would never flag anything
            raise InputError("PVs hold NaN or infinite values")
        check_finite({"threshold": threshold})
        if not 0.0 <= threshold < 1.0:
            raise InputError(f"monitor threshold must be in [0, 1), got {threshold}")
        self.pvs = pvs.detach().float().cpu()
        self.threshold = threshold
        self.thresholds = torch.full((self.num_pvs,), threshold) if thresholds is None else thresholds.float().cpu()
        if self.thresholds.shape != (self.num_pvs,):
            raise InputError(f"expected {self.num_pvs} per-PV thresholds, got shape {tuple(self.thresholds.shape)}")

    @property
    def num_pvs(self) -> int:
        return int(self.pvs.shape[0])

    @property
    def num_raised(self) -> int:
        """PVs whose threshold calibration raised above the base threshold."""
        return int((self.thresholds > self.threshold).sum())

    def calibrated(
        self,
        clean_outputs: torch.Tensor,
        margin: float = CALIBRATION_MARGIN,
        quantile: float = CALIBRATION_QUANTILE,
        ceiling: float = CALIBRATION_CEILING,
    ) -> Monitor:
        """A monitor whose per-PV thresholds sit ``margin`` above the ``quantile`` of the clean outputs'
        matches with that PV, never below the base threshold and never above ``ceiling``.

        The quantile (not the maximum) keeps a few clean texts that really fire the backdoor (a trigger-like
        subword such as the ``##mm`` of "35mm") from raising a PV out of reach; the ceiling keeps a PV that
        many clean texts reach watching at all. The defaults were chosen on 400 held-out sentences in each of
        the 12 guard benchmark cells (``benchmarks/bench_guard.py --parts sweep``), calibrated on 1,000 texts:
        give at least ``1 / (1 - quantile)`` texts, or the quantile is close to the maximum.
        """
        check_calibration(self.threshold, margin, quantile, ceiling)
        if clean_outputs.shape[0] == 0:
            raise InputError("calibration needs at least one clean input")
        if (count := clean_outputs.shape[0]) < (enough := calibration_size(quantile)):
            logger.warning(
                "calibrating on %d texts: their %g quantile is close to their maximum, so one clean text that "
                "fires the backdoor can raise a PV out of reach; give at least %d",
                count, quantile, enough,
            )  # fmt: skip
        if self.num_pvs == 0:
            return self
        shares = sign_match(clean_outputs.detach().float().cpu(), self.pvs)
        highest = shares.quantile(quantile, dim=0)
        raised = torch.maximum(self.thresholds, (highest + margin).clamp(max=ceiling))
        return Monitor(self.pvs, self.threshold, raised)

    def __call__(self, outputs: torch.Tensor) -> MonitorResult:
        rows = outputs.shape[0]
        if self.num_pvs == 0:
            zeros = torch.zeros(rows)
            return MonitorResult(zeros.bool(), zeros, torch.full((rows,), -1, dtype=torch.long))
        shares = sign_match(outputs.detach().float().cpu(), self.pvs)
        over = shares - self.thresholds[None]
        flagged = (over > 0).any(dim=1)
        index = over.argmax(dim=1)
        match = shares.max(dim=1).values
        return MonitorResult(flagged, match, torch.where(flagged, index, torch.full_like(index, -1)))
