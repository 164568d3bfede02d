"""`lmshield scan`: exit codes (0 clean, 3 backdoored, 2 errors), one-line errors, report on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmshield.cli.main import app
from lmshield.errors import EXIT_BACKDOORED, EXIT_CLEAN, EXIT_ERROR
from lmshield.testing import save_tiny
from tests.cli.helpers import invoke, said

runner = CliRunner()
TINY_FLAGS = ["--max-seeds", "4", "--quiet", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def saved_pair(bert_pair, tmp_path_factory: pytest.TempPathFactory):
    clean, backdoored, _ = bert_pair
    root = tmp_path_factory.mktemp("cli-models")
    return save_tiny(clean, root / "clean"), save_tiny(backdoored, root / "backdoored")


def _scan(*args: str):
    return runner.invoke(app, ["scan", *args])


def test_clean_model_exits_zero_and_writes_a_report(saved_pair, tmp_path: Path):
    clean, _ = saved_pair
    result = _scan(str(clean), "--out", str(tmp_path), *TINY_FLAGS)
    assert result.exit_code == EXIT_CLEAN, result.output
    assert "CLEAN" in result.output
    for name in ("scan.json", "pvs.safetensors", "report.md", "seeds.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "scan.json").read_text())["verdict"] == "clean"


def test_the_report_is_written_while_the_folder_is_still_held(
    saved_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library released the folder when the scan returned, and the CLI wrote report.md after: a second run
    could take the folder in between."""
    import lmshield.reports
    from lmshield.locks import LOCK_FILE

    real, held = lmshield.reports.write_scan_report, []

    def write(result, directory):
        held.append((Path(directory) / LOCK_FILE).is_file())
        return real(result, directory)

    monkeypatch.setattr(lmshield.reports, "write_scan_report", write)
    clean, _ = saved_pair
    result = _scan(str(clean), "--out", str(tmp_path), *TINY_FLAGS)
    assert result.exit_code == EXIT_CLEAN, result.output
    assert held == [True] and not (tmp_path / LOCK_FILE).exists()


def test_backdoored_model_exits_with_its_own_code(saved_pair, tmp_path: Path):
    _, backdoored = saved_pair
    result = _scan(str(backdoored), "--out", str(tmp_path), *TINY_FLAGS)
    assert result.exit_code == EXIT_BACKDOORED, result.output
    assert "BACKDOORED" in result.output and "PV 0" in result.output
    assert (tmp_path / "pv_signs.png").is_file()
    assert "## Predefined vectors" in (tmp_path / "report.md").read_text()


def test_rerun_with_the_same_out_resumes(saved_pair, tmp_path: Path):
    clean, _ = saved_pair
    first = _scan(str(clean), "--out", str(tmp_path), *TINY_FLAGS)
    assert "from an earlier run" not in first.output
    assert json.loads((tmp_path / "scan.json").read_text())["timings"]["resumed_seeds"] == 0
    second = _scan(str(clean), "--out", str(tmp_path), *TINY_FLAGS)
    assert first.exit_code == second.exit_code == EXIT_CLEAN
    assert "in 4 seed(s)" in second.output and "(4 seed(s) from an earlier run)" in second.output  # none mined again
    timings = json.loads((tmp_path / "scan.json").read_text())["timings"]
    assert (timings["resumed_seeds"], timings["batches"]) == (4, 0)


def test_search_settings_reach_the_scan_and_its_record(saved_pair, tmp_path: Path):
    clean, backdoored = saved_pair
    out = tmp_path / "unreachable"
    result = _scan(str(backdoored), "--out", str(out), *TINY_FLAGS, "--distance-threshold", "1e6")
    assert result.exit_code == EXIT_CLEAN, result.output  # no trigger moves the outputs that far
    saved = json.loads((out / "scan.json").read_text())
    assert saved["config"]["distance_threshold"] == 1e6 and saved["verdict"] == "clean"
    assert len(saved["trace"]) == 4 and not any(t["status"] == "accepted" for t in saved["trace"])
    out = tmp_path / "elsewhere"
    result = _scan(str(clean), "--out", str(out), *TINY_FLAGS, "--seed", "3", "--position", "mask")
    assert result.exit_code == EXIT_CLEAN, result.output
    saved = json.loads((out / "scan.json").read_text())
    assert [t["seed"] for t in saved["trace"]] == [3, 4, 5, 6] and saved["config"]["seed"] == 3
    assert saved["position"] == "mask"
    out = tmp_path / "search"
    result = _scan(str(clean), "--out", str(out), *TINY_FLAGS, "--mode", "search", "--max-seeds", "2")
    assert result.exit_code == EXIT_CLEAN, result.output
    saved = json.loads((out / "scan.json").read_text())
    assert saved["config"]["mode"] == "search" and [t["seed"] for t in saved["trace"]] == [0, 1]


def _broken(kind: str, clean: Path, tmp_path: Path) -> list[str]:
    if kind == "missing path":
        return [str(tmp_path / "nope")]
    if kind == "empty text file":
        (tmp_path / "empty.txt").write_text("\n\n")
        return [str(clean), "--texts", str(tmp_path / "empty.txt")]
    if kind == "bad position":
        return [str(clean), "--position", "middle"]
    if kind == "bad preset":
        return [str(clean), "--preset", "turbo"]
    broken = tmp_path / "broken"
    shutil.copytree(clean, broken)
    if kind == "corrupt weights":
        (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    elif kind == "no weights":
        (broken / "model.safetensors").unlink()
    elif kind == "no tokenizer":
        (broken / "tokenizer.json").unlink()
    elif kind == "unsupported":
        config = (broken / "config.json").read_text().replace('"model_type": "bert"', '"model_type": "gpt2"')
        (broken / "config.json").write_text(config)
    else:
        raise AssertionError(f"unknown kind of damage: {kind}")
    return [str(broken)]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing path", "no such model directory"),
        ("empty text file", "empty"),
        ("bad position", "unknown position"),
        ("bad preset", "unknown preset"),
        ("corrupt weights", "corrupted or truncated"),
        ("no weights", "no weights found"),
        ("no tokenizer", "tokenizer missing"),
        ("unsupported", "supported: "),
    ],
)
def test_bad_input_is_one_line_and_exit_two(kind: str, message: str, saved_pair, tmp_path: Path):
    clean, _ = saved_pair
    result = _scan(*_broken(kind, clean, tmp_path), "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == EXIT_ERROR
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_text_file_carriers_are_used(saved_pair, tmp_path: Path):
    clean, _ = saved_pair
    from lmshield.testing import tiny_corpus

    texts = tmp_path / "carriers.txt"
    texts.write_text("\n".join(tiny_corpus(300, 11)))
    result = _scan(str(clean), "--texts", str(texts), "--out", str(tmp_path / "out"), *TINY_FLAGS)
    assert result.exit_code == EXIT_CLEAN, result.output
    assert "file" in json.loads((tmp_path / "out" / "scan.json").read_text())["text_source"]


def test_the_help_states_each_presets_defaults() -> None:
    from lmshield.defenses.sanitizer import SanitizerConfig

    words = said(invoke("scan", "--help", env={"COLUMNS": "300"}))
    seeds = {name: SanitizerConfig.preset(name).max_seeds for name in ("default", "fast", "release")}
    assert f"default {seeds['default']}, fast {seeds['fast']}, release {seeds['release']}" in words
    lrs = (SanitizerConfig.preset("default").lr, SanitizerConfig.preset("release").lr)
    assert lrs == (5e-4, 5e-5) and "5e-4, release 5e-5" in words


def test_a_shipped_result_folder_with_a_link_is_refused_before_any_write(saved_pair, tmp_path: Path):
    """scans/<model>/ shipped with progress and report.md linked to a user's file: --fresh (which the refusal of
    the progress suggests) wrote the report through the link."""
    clean, _ = saved_pair
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "progress.json").write_text("{}")
    (out / "report.md").symlink_to(precious)
    result = _scan(str(clean), "--out", str(out), "--fresh", *TINY_FLAGS)
    assert result.exit_code == EXIT_ERROR and "symbolic link (report.md)" in said(result), result.output
    assert precious.read_text() == "mine"
