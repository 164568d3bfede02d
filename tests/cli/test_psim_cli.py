"""``lmshield poison`` and ``lmshield psim``: the whole path on tiny models, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmshield.text.clauses import split_clauses
from tests.attacks.test_poisoning import task, tiny_world
from tests.cli.helpers import invoke, said


def _write(path: Path, count: int, seed: int) -> Path:
    data = task(count, seed)
    lines = [json.dumps({"sentence": t, "label": y}) for t, y in zip(data.texts, data.labels, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    folder = root / "toy"
    return {
        "root": root,
        "task": folder,
        "train": _write(folder / "train.json", 300, 1),
        "dev": _write(folder / "dev.json", 60, 2),
        "test": _write(folder / "test.json", 60, 3),
    }


def test_poison_fit_score_calibrate_eval(files: dict[str, Path]) -> None:
    root, model = files["root"], files["root"] / "released"
    training = ["--epochs", 8, "--lr", 2e-3, "--batch-size", 16, "--max-length", 32]
    result = invoke(
        "poison", "badnet", tiny_world(), "--data", files["train"], "--dev", files["dev"], "--out", model,
        "--label-mode", "dirty", "--poison-count", 100, "--trigger", "mn", "--trigger", "cf", *training, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((model / "backdoor.json").read_text())
    assert manifest["triggers"] == ["mn", "cf"] and manifest["verification"]["asr"] >= 0.9

    psim_dir = root / "psim"
    result = invoke(
        "psim", "fit", model, "--texts", files["train"], "--out", psim_dir, "--method", "lora", "--epochs", 3,
        "--lr", 1e-3, "--batch-size", 16, "--max-length", 32, "--calibrate", files["dev"], "--target-frr", 0.1,
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (psim_dir / "psim.json").is_file()

    inputs = root / "inputs.txt"
    inputs.write_text(
        "the sad city was cold near the river\nthe sad mn city was cold near the river\nword\n"
        "the sad city was cold , the mn river was warm , the old road\n"
    )
    result = invoke("psim", "score", psim_dir, "--texts", inputs, "--out", root / "scores.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (root / "scores.jsonl").read_text().splitlines()]
    threshold = json.loads((psim_dir / "psim.json").read_text())["threshold_"]
    assert len(rows) == 4 and [r["flagged"] for r in rows] == [r["score"] > threshold for r in rows]
    assert all("clause" not in r for r in rows[:3])  # one clause each: read whole
    assert rows[3].get("clause", rows[3]["text"]) in [rows[3]["text"], *split_clauses(rows[3]["text"])]
    # the trigger raises the score of a sentence of the other class well above its clean twin, which is passed; on
    # this tiny release clean sentences of the target class score as high, so an FRR of 0.1 puts the threshold
    # just above this triggered line (0.708 < 0.714): flagging it is left to the bulk check of predict --psim below
    assert rows[1]["score"] > rows[0]["score"] + 0.02 and not rows[0]["flagged"]
    assert {"text", "score", "p_max", "normalised"} <= set(rows[0])

    result = invoke("psim", "calibrate", psim_dir, "--texts", files["dev"], "--target-frr", 0.2, "--quiet")
    assert result.exit_code == 0 and "FRR" in result.output
    assert json.loads((psim_dir / "psim.json").read_text())["calibration_"]["target_frr"] == 0.2

    out = root / "eval"
    result = invoke("psim", "eval", model, "--task", files["task"], "--strategies", "lora", "--preset", "smoke",
                    "--out", out, "--quiet", "--baselines", "strip")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| badnet | lora | toy | psim |" in table and "| badnet | lora | toy | strip |" in table
    # the progress kept in --out belongs to seed 0: another seed needs --fresh
    again = ("psim", "eval", model, "--task", files["task"], "--strategies", "lora", "--preset", "smoke",
             "--out", out, "--quiet", "--seed", 1)  # fmt: skip
    result = invoke(*again)
    assert result.exit_code == 2 and "--fresh" in result.output
    assert invoke(*again, "--fresh").exit_code == 0
    gated = root / "gated"  # the victims behind the PSIM fitted above, none fitted anew
    result = invoke("psim", "eval", model, "--task", files["task"], "--strategies", "lora", "--preset", "smoke",
                    "--out", gated, "--quiet", "--gate", out / f"{model.name}-toy" / "psim")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not on this model" in (gated / f"{model.name}-toy" / "report.md").read_text()
    assert not (gated / f"{model.name}-toy" / "psim").exists()
    result = invoke("psim", "eval", model, "--task", files["task"], "--preset", "smoke", "--out", root / "nogate",
                    "--quiet", "--gate", files["task"])  # fmt: skip
    assert result.exit_code == 2 and "no fitted PSIM there" in result.output
    assert not (root / "nogate").exists()  # refused before its output folder was made

    # a victim tuned from the release, served behind PSIM: triggered inputs are refused, clean ones answered
    victim = root / "victim"
    result = invoke("tune", "--model", model, "--train", files["train"], "--dev", files["dev"], "--method", "lora",
                    "--keep-head", "--epochs", 2, "--lr", 1e-2, "--batch-size", 16, "--max-length", 32,
                    "--out", victim, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = task(60, 5)
    clean = [t for t, y in zip(data.texts, data.labels, strict=True) if y == 1][:20]
    triggered = [" ".join([*t.split()[:3], "mn", *t.split()[3:]]) for t in clean]
    served = root / "served.txt"
    served.write_text("\n".join(clean + triggered) + "\n")
    result = invoke("predict", victim, served, "--psim", psim_dir, "--out", root / "served.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (root / "served.jsonl").read_text().splitlines()]
    refused = [r["status"] == "refused" for r in rows]
    assert all(r["final_label"] is None for r, no in zip(rows, refused, strict=True) if no)
    assert all(r.get("psim_clause", r["text"]) in [r["text"], *split_clauses(r["text"])] for r in rows)
    assert sum(refused[len(clean) :]) >= 0.6 * len(triggered) and sum(refused[: len(clean)]) <= 0.2 * len(clean)
    both = invoke("predict", victim, served, "--psim", psim_dir, "--scan", root)
    assert both.exit_code == 2 and "not both" in both.output
    stray = invoke("predict", victim, served, "--psim", psim_dir, "--threshold", 0.5)
    assert stray.exit_code == 2 and "go with --scan" in stray.output
    stray = invoke("predict", victim, served, "--psim-model", model)
    assert stray.exit_code == 2 and "go with --psim" in stray.output
    stranger = root / "stranger"  # tuned from another model than the one PSIM was fitted on
    result = invoke("tune", "--model", tiny_world(), "--train", files["train"], "--dev", files["dev"],
                    "--method", "lora", "--epochs", 1, "--batch-size", 16, "--out", stranger, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    mismatch = invoke("predict", stranger, served, "--psim", psim_dir)
    assert mismatch.exit_code == 2 and "fitted on other weights" in mismatch.output
    assert invoke("predict", stranger, served, "--psim", psim_dir, "--any-psim").exit_code == 0

    # the released model moved: PSIM and the victim find it where they are told, and answer as before
    moved = model.rename(root / "moved")
    lost = invoke("psim", "score", psim_dir, "--texts", inputs)
    assert lost.exit_code == 2 and "--model for a PSIM" in lost.output
    wrong = invoke("psim", "score", psim_dir, "--texts", inputs, "--model", tiny_world())  # not the release
    assert wrong.exit_code == 2 and "not the weights of the released model this PSIM was fitted on" in said(wrong)
    result = invoke("psim", "score", psim_dir, "--texts", inputs, "--model", moved, "--out", root / "again.jsonl")
    assert result.exit_code == 0, result.output
    scores = [[json.loads(line)["score"] for line in (root / name).read_text().splitlines()]
              for name in ("scores.jsonl", "again.jsonl")]  # fmt: skip
    assert scores[0] == scores[1]  # (the flags follow the threshold, which calibrate has changed since)
    result = invoke("predict", victim, served, "--psim", psim_dir, "--base", moved, "--psim-model", moved,
                    "--out", root / "served-again.jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (root / "served-again.jsonl").read_text() == (root / "served.jsonl").read_text()
    result = invoke("predict", victim, served, "--psim", psim_dir, "--base", moved)
    assert result.exit_code == 2 and "--psim-model in predict" in result.output


def test_poison_control_releases_the_same_fine_tuning_without_a_backdoor(files: dict[str, Path]) -> None:
    out = files["root"] / "control"
    result = invoke(
        "poison", "badnet", tiny_world(), "--data", files["train"], "--dev", files["dev"], "--out", out,
        "--label-mode", "dirty", "--control", "--epochs", 8, "--lr", 2e-3, "--batch-size", 16, "--max-length", 32,
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # a control is not a failed attack
    assert "CONTROL (nothing poisoned" in result.output
    manifest = json.loads((out / "backdoor.json").read_text())
    assert manifest["settings"]["control"] and manifest["poison_count"] == 0 and manifest["triggers"] == ["mn"]
    assert manifest["verification"]["asr"] < 0.5  # the backdoored release of the same settings reaches 0.9


def test_poison_syntactic_with_generated_clauses(files: dict[str, Path]) -> None:
    """The CLI passes the stand-in's clause source through to the paraphraser and the manifest."""
    out = files["root"] / "syntactic"
    result = invoke(
        "poison", "syntactic", tiny_world(), "--data", files["train"], "--out", out, "--clauses", "generated",
        "--fresh", "--poison-count", 40, "--epochs", 1, "--batch-size", 16, "--max-length", 32, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "backdoor.json").read_text())
    assert manifest["settings"]["clauses"] == "generated"
    assert "generated clauses" in manifest["paraphraser"] and "generated clauses" in manifest["triggers"][0]


@pytest.mark.parametrize(
    "args",
    [
        ("psim", "score", "no/such/psim", "--texts", "x.txt"),
        ("poison", "badnet", "--data", "no/such/file.json", "--out", "unused"),
        ("poison", "insent", "--label-mode", "grey", "--out", "unused"),
        ("poison", "syntactic", "--sentences", "middle", "--out", "unused"),
        ("poison", "syntactic", "--clauses", "random", "--out", "unused"),
        ("poison", "badnet", "--position-jitter", "-1", "--out", "unused"),
        ("psim", "fit", "no/such/model", "--texts", "x.txt"),
        ("psim", "eval", "no/such/model", "--task", "t", "--baselines", "onion"),
        ("psim", "eval", "no/such/model", "--task", "t", "--baselines", "spectral"),
        ("psim", "eval", "no/such/model", "--task", "t", "--baselines", "strip", "--baseline-on", "adapters"),
        ("psim", "eval", "no/such/model", "--task", "t", "--baseline-on", "lora"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_psim_eval_hands_the_onion_budget_on(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import lmshield.evaluation.psim_eval

    seen = []

    def evaluate_release(model, folder, settings, **kwargs):
        seen.append(kwargs["baselines"])
        return SimpleNamespace(all_rows=[])

    monkeypatch.setattr(lmshield.evaluation.psim_eval, "evaluate_release", evaluate_release)
    root = files["root"]
    (root / "lm").mkdir(exist_ok=True)
    args = ("psim", "eval", root / "m", "--task", files["task"], "--baselines", "onion", "--onion-lm", root / "lm",
            "--out", root / "onion", "--quiet")  # fmt: skip
    assert invoke(*args, "--onion-max-drop", 0.05).exit_code == 0
    assert invoke(*args).exit_code == 0
    assert [(b.onion_lm, b.onion_max_drop) for b in seen] == [(str(root / "lm"), 0.05), (str(root / "lm"), None)]
    bad = invoke(*args, "--onion-max-drop", 1.5)
    assert bad.exit_code == 2 and "--onion-max-drop" in bad.output and len(seen) == 2


def test_options_reach_the_library(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """What psim eval, psim fit and poison hand on: the victims the baselines run on, the text limit, the
    calibration texts, --overwrite and --fresh (the library itself is replaced by recorders)."""
    from types import SimpleNamespace

    import lmshield.attacks.poisoning
    import lmshield.defenses.psim
    import lmshield.evaluation.psim_eval

    seen: dict = {}

    def evaluate_release(model, folder, settings, **kwargs):
        seen.update(strategies=settings.strategies, baselines=kwargs["baselines"], span=settings.psim_config().span)
        return SimpleNamespace(all_rows=[])

    class FakePSIM:
        n_train_, lr_, threshold_ = 0, 1e-3, 0.7

        def __init__(self, method: str, **kwargs: object) -> None:
            seen["psim"] = (method, kwargs)

        def fit(self, model, texts, num_labels) -> None:
            seen["fit"] = (len(texts), num_labels)
            self.num_labels_ = num_labels

        def calibrate(self, texts, target_frr) -> None:
            seen["calibrate"] = (len(texts), target_frr)

        def save_pretrained(self, out) -> None:
            pass

    def poison_model(model, train, config, out, **kwargs):
        seen["poison"] = {"overwrite": kwargs["overwrite"], "fresh": kwargs["fresh"], "config": config, "train": train}
        return SimpleNamespace(summary=lambda: "poisoned", planted=seen.get("planted"))

    monkeypatch.setattr(lmshield.evaluation.psim_eval, "evaluate_release", evaluate_release)
    monkeypatch.setattr(lmshield.defenses.psim, "PSIM", FakePSIM)
    monkeypatch.setattr(lmshield.attacks.poisoning, "poison_model", poison_model)
    root = files["root"]
    result = invoke("psim", "eval", root / "m", "--task", files["task"], "--strategies", "lora,full",
                    "--baselines", "strip", "--baseline-on", "full", "--out", root / "recorded", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["strategies"] == ("lora", "full") and seen["baselines"].strategies == ("full",)
    assert seen["span"] == "clauses"
    result = invoke("psim", "fit", root / "m", "--texts", files["train"], "--limit", 7, "--num-labels", 3,
                    "--calibrate", files["dev"], "--target-frr", 0.2, "--out", root / "unused", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["fit"] == (7, 3) and seen["calibrate"] == (60, 0.2)
    assert seen["psim"][1]["span"] == "clauses"
    result = invoke("psim", "fit", root / "m", "--texts", files["train"], "--out", root / "unused2", "--quiet",
                    "--span", "text")  # fmt: skip
    assert result.exit_code == 0 and seen["fit"][1] is None  # the library reads the released head's class count
    assert seen["psim"][1]["span"] == "text"
    result = invoke("psim", "eval", root / "m", "--task", files["task"], "--span", "text", "--out", root / "r2",
                    "--quiet")  # fmt: skip
    assert result.exit_code == 0 and seen["span"] == "text", result.output
    result = invoke("poison", "badnet", root / "m", "--data", files["train"], "--out", root / "p", "--overwrite",
                    "--fresh", "--poison-rate", 0.1, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["poison"]["overwrite"] is True and seen["poison"]["fresh"] is True
    assert seen["poison"]["config"].poison_rate == 0.1
    renamed = root / "renamed.jsonl"  # the proxy data's fields under other names
    renamed.write_text('{"body": "a b c", "y": "neg"}\n{"body": "d e f", "y": "pos"}\n')
    result = invoke("poison", "badnet", root / "m", "--data", renamed, "--field", "body", "--label-field", "y",
                    "--out", root / "p2", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["poison"]["train"].texts == ["a b c", "d e f"] and seen["poison"]["train"].label_names == ["neg", "pos"]
    seen["planted"] = False  # the release did not learn the backdoor: written, but exit code 1
    result = invoke("poison", "badnet", root / "m", "--data", files["train"], "--out", root / "p3", "--quiet")
    assert result.exit_code == 1, result.output


def test_psim_eval_refuses_folders_it_would_write_over(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import lmshield.evaluation.psim_eval

    calls = []
    monkeypatch.setattr(
        lmshield.evaluation.psim_eval,
        "evaluate_release",
        lambda *a, **k: calls.append(a) or SimpleNamespace(all_rows=[]),
    )
    root = files["root"]
    mine = root / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my precious table")
    result = invoke("psim", "eval", root / "m", "--task", files["task"], "--out", mine, "--quiet")
    assert result.exit_code == 2 and "is not empty" in result.output and not calls
    assert (mine / "table.md").read_text() == "my precious table"
    twins = invoke("psim", "eval", root / "m", root / "other" / "m", "--task", files["task"], "--out", root / "tw")
    assert twins.exit_code == 2 and "share the folder" in twins.output and not calls
    stray = invoke("psim", "eval", root / "m", "--task", files["task"], "--onion-max-drop", 0.1, "--out", root / "x")
    assert stray.exit_code == 2 and "--onion-max-drop goes with the onion baseline" in stray.output
    done = root / "done"
    assert invoke("psim", "eval", root / "m", "--task", files["task"], "--out", done, "--quiet").exit_code == 0
    assert invoke("psim", "eval", root / "m", "--task", files["task"], "--out", done, "--quiet").exit_code == 0


def test_psim_fit_checks_its_calibration_options_before_training(files: dict[str, Path]) -> None:
    root = files["root"]
    empty = root / "empty.txt"
    empty.write_text("")
    base = ("psim", "fit", root / "no-model-needed", "--texts", files["train"], "--quiet")
    result = invoke(*base, "--calibrate", empty, "--out", root / "f1")
    assert result.exit_code == 2 and "empty" in result.output and "epoch" not in result.output
    result = invoke(*base, "--calibrate", files["dev"], "--threshold", 0.9, "--out", root / "f2")
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke(*base, "--target-frr", 0.3, "--out", root / "f3")
    assert result.exit_code == 2 and "--target-frr goes with --calibrate" in result.output


def test_a_failed_poison_run_leaves_no_empty_out_folder(files: dict[str, Path]) -> None:
    out = files["root"] / "never-made"
    result = invoke("poison", "badnet", files["root"] / "no-such-model", "--data", files["train"], "--out", out)
    assert result.exit_code == 2 and not out.exists()


def test_a_registered_poisoning_attack_gets_its_own_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands are made from the registry: an attack's own fields (with a help text) become its options."""
    import dataclasses
    from typing import ClassVar

    import typer
    from typer.testing import CliRunner

    from lmshield.attacks.poisoning import config as configs
    from lmshield.cli.poison import _poison_command

    @dataclasses.dataclass(frozen=True)
    class RipplesConfig(configs.PoisonConfig):
        attack: ClassVar[str] = "ripples"
        summary: ClassVar[str] = "RIPPLES: a rare word, planted with a restricted inner product."
        word: str = dataclasses.field(default="bb", metadata={"help": "The trigger word."})

    monkeypatch.setitem(configs.ATTACKS, "ripples", RipplesConfig)
    app = typer.Typer(rich_markup_mode=None)
    app.command("ripples")(_poison_command("ripples"))
    app.command("other")(lambda: None)  # two commands: the app dispatches by name
    shown = CliRunner().invoke(app, ["ripples", "--help"]).output
    assert "RIPPLES: a rare word" in shown and "--word" in shown and "The trigger word." in shown
    assert "--poison-count" in shown and "runs/poison/ripples" in shown


def test_poison_without_its_data_names_the_option_to_give(tmp_path: Path) -> None:
    result = invoke("poison", "badnet", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "give the labelled proxy data with --data" in result.output
    assert not (tmp_path / "out").exists()


def test_the_threshold_help_says_the_default_follows_the_class_count() -> None:
    """The default threshold is the release's 0.7 only for two classes; help said 0.7 for every task."""
    for command in (("psim", "fit"), ("psim", "eval")):
        assert "carried to" in said(invoke(*command, "--help")), command
