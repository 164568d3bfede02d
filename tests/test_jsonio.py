"""Standard JSON for reports: NaN and infinities are written as null."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmshield.jsonio import dumps, json_ready, nan_if_none


def test_non_finite_floats_become_null_at_any_depth() -> None:
    payload = {"a": math.nan, "b": [1.5, -math.inf, {"c": math.inf}], "d": (0.0, math.nan), "e": "NaN", "f": 3}
    assert json_ready(payload) == {"a": None, "b": [1.5, None, {"c": None}], "d": [0.0, None], "e": "NaN", "f": 3}
    assert json.loads(dumps(payload)) == json_ready(payload)  # a string "NaN" is left alone
    assert "NaN" not in dumps([math.nan]) and "Infinity" not in dumps([-math.inf])


def test_a_metric_that_did_not_apply_reads_back_as_nan() -> None:
    assert math.isnan(nan_if_none(None)) and nan_if_none(0.25) == 0.25


def test_the_marker_json_is_written_whole_and_removed_before_a_rewrite(tmp_path: Path) -> None:
    from lmshield.jsonio import unmark, write_marker_json

    marker = tmp_path / "scan.json"
    write_marker_json(marker, {"verdict": "clean"})
    assert json.loads(marker.read_text()) == {"verdict": "clean"} and [p.name for p in tmp_path.iterdir()] == [
        "scan.json"
    ]
    unmark(marker)
    assert not marker.exists() and (tmp_path / ".scan.json.unfinished").is_file()
    unmark(marker)  # nothing to remove: no error
    write_marker_json(marker, {"verdict": "clean"})
    assert not (tmp_path / ".scan.json.unfinished").exists()


def test_a_command_may_write_over_its_own_interrupted_save(tmp_path: Path) -> None:
    """An artefact save interrupted after its top JSON went (psim fit, a one-epoch tune) was refused as a folder
    of other files, even with --overwrite; the unfinished marker names it as the command's own."""
    from lmshield.cli._common import refuse_to_replace
    from lmshield.errors import InputError
    from lmshield.jsonio import unmark

    (tmp_path / "module").mkdir()
    (tmp_path / "module" / "head.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="holds no fitted PSIM"):
        refuse_to_replace(tmp_path, "psim.json", "fitted PSIM", overwrite=False)
    (tmp_path / ".psim.json.unfinished").write_text("shipped with the folder")  # not this user's lmshield's
    with pytest.raises(InputError, match="holds no fitted PSIM"):
        refuse_to_replace(tmp_path, "psim.json", "fitted PSIM", overwrite=False)
    unmark(tmp_path / "psim.json")
    refuse_to_replace(tmp_path, "psim.json", "fitted PSIM", overwrite=False)  # accepted: its own
