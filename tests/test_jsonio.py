"""Standard JSON for reports: NaN and infinities are written as null."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    assert json.loads(marker.read_text()) == {"verdict": "clean"} and not (tmp_path / "scan.json.tmp").exists()
    unmark(marker)
    assert not marker.exists()
    unmark(marker)  # nothing to remove: no error
