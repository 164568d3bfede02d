"""Output folders and values are checked before any work: one line, exit code 2, nothing replaced."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import lmshield.attacks
from lmshield.errors import EXIT_ERROR
from tests.cli.helpers import invoke, said


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("keep me")
    for command in (["scan", "no-model"], ["tune", "--train", "t.jsonl"], ["psim", "fit", "m", "--texts", "t"]):
        result = invoke(*command, "--out", in_the_way)
        assert result.exit_code == EXIT_ERROR, (command, result.output)
        assert "is a file" in said(result)
    assert in_the_way.read_text() == "keep me"
    result = invoke("predict", "clf", "texts.txt", "--out", tmp_path)
    assert result.exit_code == EXIT_ERROR and "is a directory" in said(result)
    for command in (["tune", "--train", "t.jsonl", "--out"], ["predict", "clf", "texts.txt", "--out"]):
        result = invoke(*command, in_the_way / "below")  # a file where a folder must be made
        assert result.exit_code == EXIT_ERROR and "is a file, so" in said(result), (command, result.output)


def test_an_output_never_replaces_an_input(tmp_path: Path) -> None:
    """predict, psim score and guard eval wrote their output over their own input texts, or over an artefact's
    top file, without a word; both are refused before any work, and the files stay as they were."""
    texts, data = tmp_path / "texts.txt", tmp_path / "test.jsonl"
    texts.write_text("a text\n")
    data.write_text(json.dumps({"sentence": "a text", "label": 0}) + "\n")
    classifier = tmp_path / "clf"
    classifier.mkdir()
    (classifier / "tuning.json").write_text("{}")
    guard = ["guard", "eval", "--classifier", classifier, "--scan", tmp_path / "scan", "--test", data]
    for command, message in (
        (["predict", classifier, texts, "--out", texts], "--out .* is one of this command's inputs"),
        (["predict", classifier, texts, "--out", classifier / "tuning.json"], "lies inside the input"),
        (["predict", classifier, texts, "--out", classifier / "new.jsonl"], "lies inside the input"),
        (["psim", "score", tmp_path / "psim", "--texts", texts, "--out", texts], "is one of this command's inputs"),
        ([*guard, "--triggers", "cf", "--out", data], "is one of this command's inputs"),
        (["predict", classifier, texts, "--scan", tmp_path / "scan", "--calibrate", texts, "--save-calibration", texts],
         "--save-calibration .* is one of this command's inputs"),
        ([*guard, "--triggers", "cf", "--calibrate", texts, "--save-calibration", tmp_path / "r.json", "--out",
          tmp_path / "r.json"], "is what --out writes"),
    ):  # fmt: skip
        result = invoke(*command)
        assert result.exit_code == EXIT_ERROR and re.search(message, said(result)), (command, result.output)
    assert texts.read_text() == "a text\n" and (classifier / "tuning.json").read_text() == "{}"
    assert json.loads(data.read_text())["label"] == 0


def test_a_calibration_is_saved_only_under_a_name_calibrate_reads_back(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    scan = ["--scan", tmp_path / "scan", "--calibrate", texts]
    result = invoke("predict", tmp_path / "clf", texts, *scan, "--save-calibration", tmp_path / "calibration")
    assert result.exit_code == EXIT_ERROR and "name it *.safetensors" in said(result)
    for size in ("5", "64"):  # the default too, when given: it is ignored all the same
        result = invoke("predict", tmp_path / "clf", texts, "--psim", tmp_path / "psim", "--batch-size", size)
        assert result.exit_code == EXIT_ERROR and "--batch-size does not go with --psim" in said(result)


@pytest.mark.parametrize(
    ("command", "marker"),
    [(["tune", "--train", "t.jsonl"], "tuning.json"), (["psim", "fit", "m", "--texts", "t"], "psim.json")],
)
def test_a_finished_result_is_not_replaced_without_overwrite(tmp_path: Path, command: list[str], marker: str) -> None:
    (tmp_path / marker).write_text('{"kept": true}')
    result = invoke(*command, "--out", tmp_path)
    assert result.exit_code == EXIT_ERROR and "--overwrite" in result.output
    assert json.loads((tmp_path / marker).read_text()) == {"kept": True}
    overwritten = invoke(*command, "--out", tmp_path, "--overwrite")  # goes on, and fails on the missing data
    assert overwritten.exit_code == EXIT_ERROR and "no such file" in overwritten.output


@pytest.mark.parametrize(("command", "marker"), [(["tune", "--train", "t.jsonl"], "psim.json"),
                                                  (["psim", "fit", "m", "--texts", "t"], "config.json")])  # fmt: skip
def test_a_folder_holding_something_else_is_refused_even_with_overwrite(
    tmp_path: Path, command: list[str], marker: str
) -> None:
    (tmp_path / marker).write_text("{}")
    result = invoke(*command, "--out", tmp_path, "--overwrite")
    assert result.exit_code == EXIT_ERROR and "choose another --out" in said(result), result.output


@pytest.mark.parametrize(
    "command",
    [
        ["tune", "--train", "t.jsonl", "--overwrite"],
        ["psim", "fit", "m", "--texts", "t", "--overwrite"],
        ["scan", "no-model", "--fresh"],
        ["poison", "badnet", "no-model", "--data", "DATA", "--overwrite"],
        ["attack", "por", "--model", "no-model", "--overwrite"],
    ],
)
def test_a_folder_of_other_files_is_never_written_over(tmp_path: Path, command: list[str]) -> None:
    """A user's folder that holds no result of the command (nor its progress) is refused before any work."""
    for name in ("head.safetensors", "report.md", "model.safetensors"):
        (tmp_path / name).write_text("mine")
    data = tmp_path.parent / f"{tmp_path.name}-data.jsonl"  # poison reads its data first
    data.write_text('{"sentence": "a b c", "label": 0}\n{"sentence": "d e f", "label": 1}\n')
    result = invoke(*[str(data) if part == "DATA" else part for part in command], "--out", tmp_path)
    assert result.exit_code == EXIT_ERROR and "is not empty and holds no" in said(result), result.output
    assert all((tmp_path / name).read_text() == "mine" for name in ("head.safetensors", "report.md"))


def test_a_folder_holding_only_hidden_files_counts_as_empty(tmp_path: Path) -> None:
    """A .gitkeep or .DS_Store is no user's work: the run goes on (and fails here on the missing model)."""
    (tmp_path / ".gitkeep").write_text("")
    result = invoke("scan", "./no-model", "--out", tmp_path)
    assert result.exit_code == EXIT_ERROR and "no such model directory" in said(result), result.output


def test_a_user_s_file_named_scan_json_does_not_make_a_folder_a_scan_s(tmp_path: Path) -> None:
    """A scan always keeps its progress beside its result: a scan.json alone is someone else's."""
    (tmp_path / "scan.json").write_text("mine")
    (tmp_path / "report.md").write_text("mine")
    result = invoke("scan", "no-model", "--out", tmp_path)
    assert result.exit_code == EXIT_ERROR and "holds no scan result (with its progress)" in said(result)
    assert (tmp_path / "scan.json").read_text() == "mine"


def test_a_scan_never_writes_inside_the_scanned_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model folder could ship forged progress at the default output place (scans/<name>): scanning it from
    inside must not resume from it."""
    from lmshield.testing import save_tiny, tiny_encoder

    model = save_tiny(tiny_encoder("bert"), tmp_path / "model")
    (model / "scans" / "model").mkdir(parents=True)
    (model / "scans" / "model" / "progress.json").write_text("{}")
    monkeypatch.chdir(model)
    result = invoke("scan", ".", "--quiet")
    assert result.exit_code == EXIT_ERROR and "lies inside the scanned model's folder" in said(result), result.output
    inside = invoke("scan", str(model), "--out", model / "result", "--quiet")
    assert inside.exit_code == EXIT_ERROR and "choose an output folder outside it" in said(inside)
    itself = invoke("scan", str(model), "--out", model, "--quiet")
    assert itself.exit_code == EXIT_ERROR and "holds a model, not a scan result" in said(itself)
    assert not (model / "result").exists()
    # the same forged progress beside the model, where 'lmshield scan model' run from the repository writes
    repository = tmp_path
    (repository / "scans").mkdir()
    (model / "scans" / "model").rename(repository / "scans" / "model")
    monkeypatch.chdir(repository)
    beside = invoke("scan", "model", "--quiet")
    assert beside.exit_code == EXIT_ERROR and "lmshield did not write for this user" in said(beside), beside.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tune", "--train", "t.jsonl", "--out", "o", "--limit", "-1"], "--limit"),
        (["psim", "fit", "m", "--texts", "t", "--limit", "0"], "--limit"),
        (["attack", "verify", "d", "--count", "0"], "--count"),
        (["psim", "fit", "m", "--texts", "t", "--calibrate", "c", "--target-frr", "1"], "target FRR must be in [0, 1)"),
        (["psim", "eval", "m", "--task", "t", "--strategies", "lora,foo"], "unknown tuning method 'foo'"),
        (["psim", "eval", "m", "--task", "t", "--target-frr", "1.5"], "target FRR must be in [0, 1)"),
    ],
)
def test_bad_values_are_refused_before_any_work(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == EXIT_ERROR and message in said(result), result.output


def test_an_attack_whose_verification_fails_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verification = SimpleNamespace(planted=False, note="", table=lambda: "table", summary=lambda: "NOT PLANTED")
    manifest = SimpleNamespace(triggers=["cf"], position="cls", variant="v", steps=1, seconds=0.0)
    fake = SimpleNamespace(manifest=manifest, verification=verification)
    monkeypatch.setattr(lmshield.attacks, "run_attack", lambda *args, **kwargs: fake)
    result = invoke("attack", "por", "--out", tmp_path / "m")
    assert result.exit_code == 1 and "NOT PLANTED" in result.output
    verification.planted = True
    assert invoke("attack", "por", "--out", tmp_path / "m").exit_code == 0


def test_python_dash_m_lmshield_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "lmshield", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("lmshield ")


def test_a_full_disk_keeps_the_earlier_output_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict --out, psim score --out and guard eval --out wrote their file in place: a disk that filled up
    destroyed the earlier results and left half a file (whole lines, as likely as not), which reads as finished."""
    from lmshield.cli.guard import _write_jsonl
    from lmshield.evaluation.guard_eval import GuardEvalReport

    out = tmp_path / "predictions.jsonl"
    _write_jsonl([{"text": "earlier"}], out)
    write = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _write_jsonl([{"text": "new"}] * 10, out)
    report = tmp_path / "report.json"
    with pytest.raises(OSError, match="No space left"):
        GuardEvalReport(10, 0.9, 0.9, 0.0, 1.0, 0.0, 1.0, 1.0).save(report)
    monkeypatch.undo()
    assert out.read_text() == '{"text": "earlier"}\n' and [p.name for p in tmp_path.iterdir()] == [out.name]
