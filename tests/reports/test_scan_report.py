"""The scan's Markdown report: every value of the seed table under its own header."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult
from lmshield.defenses.sanitizer.result import SeedTrace
from lmshield.reports import write_scan_report


def test_the_seed_table_puts_each_value_under_its_header(tmp_path: Path) -> None:
    trace = SeedTrace(3, "rejected", "distance too small", 2, 10, [0.1, 0.5], [0.2, 0.9], sign_consistency=0.25,
                      legitimate=True)  # fmt: skip
    model = {"source": "m", "model_type": "bert", "fingerprint": "f", "hidden_size": 8, "embedding_size": 8}
    result = ScanResult(
        verdict="clean", score=0.5, pvs=torch.empty(0, 8), triggers=torch.empty(0, 1, 8), nearest_tokens=[],
        trace=[trace], config=SanitizerConfig(), model=model, position="cls", text_source="given", spread=1.0,
    )  # fmt: skip
    result.timings = {"total_s": 0.9, "steps": 32.0, "batches": 8.0, "resumed_seeds": 4.0}
    lines = write_scan_report(result, tmp_path).read_text().splitlines()
    expected = "- time: 0.9 s (32 optimisation steps over all seeds, 8 batches; 4 seed(s) from an earlier run, whose"
    assert f"{expected} time is not counted)" in lines  # a resumed scan's time read as the whole scan's
    header = next(line for line in lines if line.startswith("| seed |"))
    row = next(line for line in lines if line.startswith("| 3 |"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")],
                     strict=True))  # fmt: skip
    assert cells == {
        "seed": "3", "status": "rejected", "epochs": "2", "distance": "0.500", "collapse": "0.9000",
        "sign consistency": "0.25", "legitimate": "yes", "why": "distance too small",
    }  # fmt: skip


def test_a_sub_trigger_pv_is_hinted_by_its_own_vectors_only(tmp_path: Path) -> None:
    whole = SeedTrace(0, "accepted", "", 1, 1, [5.0], [1.0], pv_index=0)
    part = SeedTrace(0, "accepted", "", 1, 1, [5.0], [1.0], pv_index=1, parts=[2])
    tokens = [[["cf"], ["mn"], ["qt"]], [["cf"], ["mn"], ["qt"]]]  # a sub-trigger keeps its seed's whole trigger
    model = {"source": "m", "model_type": "bert", "fingerprint": "f", "hidden_size": 8, "embedding_size": 8}
    result = ScanResult(
        verdict="backdoored", score=5.0, pvs=torch.ones(2, 8), triggers=torch.zeros(2, 3, 8), nearest_tokens=tokens,
        trace=[whole, part], config=SanitizerConfig(), model=model, position="cls", text_source="given", spread=1.0,
    )  # fmt: skip
    assert [result.trigger_hint(0), result.trigger_hint(1)] == ["cf mn qt", "qt (sub-trigger)"]
    report = write_scan_report(result, tmp_path).read_text()
    assert "moved toward: qt (sub-trigger: vectors [2] of its seed's trigger)" in report
    assert result.caveat is None and "caveat" not in report  # a cls verdict needs none
    result.position = "mask"
    assert "**caveat**: a mask-position verdict is a lead" in write_scan_report(result, tmp_path).read_text()
    assert (tmp_path / "pv_signs.png").is_file()
    clean = ScanResult(
        verdict="clean", score=0.5, pvs=torch.empty(0, 8), triggers=torch.empty(0, 3, 8), nearest_tokens=[],
        trace=[], config=SanitizerConfig(), model=model, position="cls", text_source="given", spread=1.0,
    )  # fmt: skip
    write_scan_report(clean, tmp_path)  # a clean rescan in the same folder: no stale sign plot beside it
    assert not (tmp_path / "pv_signs.png").exists()


def test_sub_triggers_are_not_counted_as_seeds() -> None:
    traces = [
        SeedTrace(0, "accepted", "", 1, 1, [5.0], [1.0], pv_index=0),
        SeedTrace(0, "accepted", "", 1, 1, [5.0], [1.0], pv_index=1, parts=[2]),
        SeedTrace(1, "abandoned", "", 1, 1, [0.1], [0.2]),
    ]
    model = {"source": "m", "model_type": "bert", "fingerprint": "f", "hidden_size": 8, "embedding_size": 8}
    result = ScanResult(
        verdict="backdoored", score=5.0, pvs=torch.ones(2, 8), triggers=torch.zeros(2, 3, 8),
        nearest_tokens=[[["cf"]] * 3] * 2, trace=traces, config=SanitizerConfig(), model=model, position="cls",
        text_source="given", spread=1.0,
    )  # fmt: skip
    assert result.num_seeds == 2 and "2 predefined vector(s) found in 2 seed(s)" in result.summary()


def test_a_clean_verdict_whose_score_reached_the_threshold_says_why(tmp_path: Path) -> None:
    """'CLEAN' above 'score 4.200 (distance threshold 3.0)' reads as a contradiction without the reason."""
    trace = SeedTrace(0, "rejected", "collapse 0.5 < 0.99", 4, 32, [4.2], [0.5], legitimate=True)
    model = {"source": "m", "model_type": "bert", "fingerprint": "f", "hidden_size": 8, "embedding_size": 8}
    result = ScanResult(
        verdict="clean", score=4.2, pvs=torch.empty(0, 8), triggers=torch.empty(0, 1, 8), nearest_tokens=[],
        trace=[trace], config=SanitizerConfig(), model=model, position="cls", text_source="given", spread=1.0,
    )  # fmt: skip
    score = next(line for line in write_scan_report(result, tmp_path).read_text().splitlines() if "score:" in line)
    assert score.startswith("- score: **4.200** (distance threshold 3.0")
    assert score.endswith(": the seeds that reached the threshold failed the collapse, sign-consistency or uniqueness "
                          "check (see the seed table)")  # fmt: skip
    below = write_scan_report(replace(result, score=2.0), tmp_path / "below").read_text()
    assert "failed the collapse" not in below


def test_hints_show_words_without_the_tokenizers_word_start_markers(tmp_path: Path) -> None:
    """RoBERTa's byte-level BPE and sentencepiece mark a word's first piece (``Ġmn``, ``▁mn``): a reader
    looking for the trigger word reads ``mn``; WordPiece's ``##`` continuations keep their mark."""
    trace = SeedTrace(0, "accepted", "", 1, 1, [5.0], [1.0], pv_index=0)
    tokens = [[["\u0120mn", "\u0120cf"], ["\u2581tq", "x"], ["##lais", "la"]]]
    model = {"source": "m", "model_type": "roberta", "fingerprint": "f", "hidden_size": 8, "embedding_size": 8}
    result = ScanResult(
        verdict="backdoored", score=5.0, pvs=torch.ones(1, 8), triggers=torch.zeros(1, 3, 8), nearest_tokens=tokens,
        trace=[trace], config=SanitizerConfig(), model=model, position="cls", text_source="given", spread=1.0,
    )  # fmt: skip
    assert result.trigger_hint(0) == "mn tq ##lais"
    assert (
        "tokens the trigger vectors moved toward: mn/cf, tq/x, ##lais/la"
        in write_scan_report(result, tmp_path).read_text()
    )
