"""Device selection: an explicit device wins, ``LMSHIELD_DEVICE`` sets the default, bad names are one-line errors."""

from __future__ import annotations

import pytest
import torch

from lmshield.devices import DEVICE_VARIABLE, resolve_device, seed_everything
from lmshield.errors import InputError

AUTO = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_picks_cuda_when_present_and_the_variable_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    assert resolve_device(None) == resolve_device("auto") == AUTO
    monkeypatch.setenv(DEVICE_VARIABLE, "cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, " auto ")
    assert resolve_device(None) == AUTO


def test_an_explicit_device_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_VARIABLE, "no-such-device")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match=DEVICE_VARIABLE):
        resolve_device(None)


def test_unknown_or_missing_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    for other in ("mps", "xpu", "meta", torch.device("meta")):  # torch parses them; they crashed deep inside
        with pytest.raises(InputError, match=r"unsupported device .*use auto, cpu, cuda"):
            resolve_device(other)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
        monkeypatch.setenv(DEVICE_VARIABLE, "cuda:0")
        with pytest.raises(InputError, match=f"{DEVICE_VARIABLE} 'cuda:0'.*CUDA is not available"):
            resolve_device(None)


def test_seed_everything_seeds_the_global_and_the_returned_generator() -> None:
    generator = seed_everything(7)
    first = (torch.rand(3), torch.rand(3, generator=generator))
    generator = seed_everything(7)
    assert torch.equal(torch.rand(3), first[0]) and torch.equal(torch.rand(3, generator=generator), first[1])
