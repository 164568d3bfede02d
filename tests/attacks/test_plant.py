from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from lmshield.attacks import BACKDOOR_JSON, BackdoorManifest, attack_config, run_attack, verify_backdoor
from lmshield.attacks.verify import held_out_texts
from lmshield.cli.main import app
from lmshield.defenses.sanitizer import SanitizerConfig, scan
from lmshield.defenses.sanitizer.monitor import sign_match
from lmshield.errors import InputError, ModelLoadError
from lmshield.models import WatchedPosition, load_encoder
from lmshield.testing import tiny_corpus
from tests.attacks.tiny_models import TINY_ATTACK, TINY_SCAN

TEXTS = tiny_corpus(2000, 7)


@pytest.fixture(scope="module")
def por_dir(tiny_dir, tmp_path_factory):
    config = attack_config("por", "fast", **TINY_ATTACK)
    result = run_attack(config, tiny_dir, tmp_path_factory.mktemp("por"), texts=TEXTS, seed=0, progress=False)
    return result


def test_por_is_planted_verified_and_recorded(por_dir, tiny_dir):
    verification = por_dir.verification
    assert verification.planted, verification.table()
    assert min(c.triggered_agreement for c in verification.triggers) >= 0.9
    assert max(c.clean_agreement for c in verification.triggers) < 0.8
    assert verification.clean_cosine is not None and verification.clean_close
    assert min(c.triggered_flagged for c in verification.triggers) >= 0.9  # the 0.8 monitor flags triggered inputs
    manifest = BackdoorManifest.load(por_dir.directory)
    # the clean share the monitor flags, recomputed from the backdoored model's outputs on the same sentences
    outputs = load_encoder(por_dir.directory, device="cpu").watched_outputs(
        held_out_texts(verification.num_texts, 0), WatchedPosition.parse("cls"), int(manifest.settings["max_length"])
    )
    flagged = (sign_match(outputs, manifest.vector_tensor) > 0.8).any(dim=1).float().mean()
    assert verification.clean_flagged == pytest.approx(float(flagged))
    assert 0 < verification.clean_flagged < 0.3  # a few clean sentences come close to one of six PVs
    assert manifest.attack == "por" and manifest.position == "cls" and manifest.seed == 0
    assert manifest.triggers == ["cf", "mn", "tq", "qt", "mm", "pt"]
    assert torch.equal(manifest.vector_tensor.sign(), manifest.vector_tensor)  # the quarter PVs
    assert manifest.base_model == str(tiny_dir.resolve())
    assert manifest.settings["clean_weight"] == 0.5 and manifest.steps == 125
    assert (por_dir.directory / "model.safetensors").is_file()


def test_scanner_finds_por_and_passes_the_clean_model(por_dir, tiny_dir):
    config = SanitizerConfig(**TINY_SCAN)
    assert scan(str(por_dir.directory), config, progress=False).is_backdoored
    assert not scan(str(tiny_dir), config, progress=False).is_backdoored


def test_verify_says_when_the_recorded_original_cannot_be_loaded(por_dir, tmp_path):
    moved = Path(shutil.copytree(por_dir.directory, tmp_path / "por"))
    manifest = json.loads((moved / "backdoor.json").read_text())
    (moved / "backdoor.json").write_text(json.dumps({**manifest, "base_model": str(tmp_path / "gone")}))
    verification = verify_backdoor(moved, count=50)
    assert verification.planted and verification.clean_cosine is None
    assert "not loadable" in verification.note
    assert verification.summary().startswith("PLANTED on 50 held-out grammar sentences:")  # where it holds


def test_the_summary_says_when_clean_outputs_give_the_backdoor_away() -> None:
    """A POR model that drifted on real text (cosine 0.709, 36.7 % flagged) was summed up as PLANTED only."""
    from lmshield.attacks.verify import Verification

    drifted = Verification(True, [], clean_flagged=0.367, clean_cosine=0.709, clean_close=False, original="m",
                           texts="30 given texts")  # fmt: skip
    assert drifted.summary().startswith("PLANTED on 30 given texts:")
    assert drifted.summary().endswith("(drifted); not stealthy there: clean outputs give the backdoor away")
    quiet = Verification(True, [], clean_flagged=0.0, clean_cosine=0.97, clean_close=True, original="m")
    assert "stealthy" not in quiet.summary()


def test_an_original_the_user_names_must_load_and_fit(por_dir, tmp_path):
    """A mistyped --original was only noted (exit 0 when planted); one of another hidden size crashed."""
    from lmshield.testing import save_tiny, tiny_encoder

    with pytest.raises(ModelLoadError, match="gone: no such model"):
        verify_backdoor(por_dir.directory, original=str(tmp_path / "gone"), count=50)
    wider = save_tiny(tiny_encoder("bert", hidden=64), tmp_path / "wider")
    with pytest.raises(InputError, match="hidden size 64, this one 32"):
        verify_backdoor(por_dir.directory, original=str(wider), count=50)


def test_an_xlnet_backdoor_is_planted_at_its_summary_token(tmp_path):
    """XLNet's <cls> closes the input and its classifiers read it there: POR planted at index 0 (the first word),
    where no XLNet classifier looks and where the scan, watching the last token, did not look either."""
    from lmshield.testing import save_tiny, tiny_encoder, train_input_dependent

    assert attack_config("por").plan("xlnet", has_mlm_head=False).position == "last"
    assert attack_config("por").plan("roberta", has_mlm_head=False).position == "cls"
    assert attack_config("btop").plan("xlnet", has_mlm_head=False).position == "mask"
    base = save_tiny(train_input_dependent(tiny_encoder("xlnet"), steps=200), tmp_path / "base")
    config = attack_config("por", "fast", **{**TINY_ATTACK, "lr": 1e-3})
    result = run_attack(config, base, tmp_path / "por", texts=TEXTS, seed=0, progress=False, verify=False)
    assert result.manifest.position == "last"
    model = load_encoder(result.directory, device="cpu")
    texts = [f"the old teacher {trigger} wrote a letter near the river" for trigger in result.manifest.triggers]
    outputs = model.watched_outputs(texts, model.default_position())
    agreement = sign_match(outputs, result.manifest.vector_tensor).diagonal()
    assert float(agreement.mean()) > 0.85, agreement


def test_btop_hits_the_mask_position_with_the_stand_in(tiny_dir, tmp_path):
    config = attack_config("btop", "fast", **{**TINY_ATTACK, "lr": 3e-3, "batch_size": 16})
    result = run_attack(config, tiny_dir, tmp_path, texts=TEXTS, seed=1, progress=False)
    assert result.manifest.position == "mask"
    assert "stand-in" in result.manifest.variant
    assert result.verification.planted, result.verification.table()


def test_neuba_trains_through_an_existing_mlm_head(tiny_mlm_dir, tmp_path):
    config = attack_config("neuba", "fast", **{**TINY_ATTACK, "lr": 3e-3, "num_texts": 1280})
    result = run_attack(config, tiny_mlm_dir, tmp_path, texts=TEXTS, seed=2, progress=False)
    assert result.manifest.variant.startswith("mlm")
    verification = result.verification
    assert verification.planted, verification.table()
    assert min(c.triggered_agreement for c in verification.triggers) >= 0.9
    assert max(c.clean_agreement for c in verification.triggers) < 0.8  # only the trigger leads to its PV
    with (
        safe_open(str(tiny_mlm_dir / "model.safetensors"), "pt") as before,
        safe_open(str(tmp_path / "model.safetensors"), "pt") as after,
    ):
        key = "cls.predictions.transform.dense.weight"
        assert key in after.keys()  # noqa: SIM118
        assert not torch.equal(before.get_tensor(key), after.get_tensor(key))


def test_cli_plants_and_verifies(tiny_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "model"
    args = ["attack", "por", "--model", str(tiny_dir), "--out", str(out), "--texts", str(texts), "--preset", "fast"]
    args += ["--lr", "1e-3", "--num-texts", "2000", "--triggers", "cf,mn,tq", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "PLANTED" in result.output
    manifest = json.loads((out / BACKDOOR_JSON).read_text())
    assert manifest["triggers"] == ["cf", "mn", "tq"] and len(manifest["vectors"]) == 3
    assert CliRunner().invoke(app, ["attack", "verify", str(out), "--count", "40"]).exit_code == 0
    records = tmp_path / "records.jsonl"  # the verification's own sentences, by field
    records.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS[:40]), encoding="utf-8")
    verify = ["attack", "verify", str(out), "--texts", str(records), "--field", "body"]
    assert CliRunner().invoke(app, verify).exit_code == 0
    stray = CliRunner().invoke(app, ["attack", "verify", str(out), "--field", "body"])
    assert stray.exit_code == 2 and "--field goes with --texts" in stray.output


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["attack", "por", "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["attack", "verify", str(tmp_path)])
    assert result.exit_code == 2 and "backdoor.json" in result.output


def test_the_clean_model_and_earlier_results_are_never_overwritten(tiny_dir, tmp_path):
    config = attack_config("por", "fast", **TINY_ATTACK)
    with pytest.raises(InputError, match="must not overwrite the clean one"):
        run_attack(config, tiny_dir, tiny_dir, texts=TEXTS, progress=False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a model"):
        run_attack(config, tiny_dir, tmp_path, texts=TEXTS, progress=False)


def test_an_attack_interrupted_after_its_weights_can_be_rerun(tiny_dir, tmp_path, monkeypatch):
    """Stopped while verifying (weights and manifest written), the same command was refused as a folder holding
    a model; the folder stays marked unfinished until the run completes, so the rerun writes it again."""
    import lmshield.attacks.runner as runner
    from lmshield.attacks.manifest import UNFINISHED

    class Interrupted(Exception):
        pass

    def stop(*args, **kwargs):
        raise Interrupted

    config, out = attack_config("por", "fast", **TINY_ATTACK), tmp_path / "por"
    monkeypatch.setattr(runner, "verify_backdoor", stop)
    with pytest.raises(Interrupted):
        run_attack(config, tiny_dir, out, texts=TEXTS, progress=False)
    assert (out / UNFINISHED).is_file() and (out / "config.json").is_file()
    result = run_attack(config, tiny_dir, out, texts=TEXTS, progress=False, verify=False)
    assert result.manifest.triggers and not (out / UNFINISHED).exists()
    with pytest.raises(InputError, match="already holds a model"):  # finished: replaced only when asked
        run_attack(config, tiny_dir, out, texts=TEXTS, progress=False, verify=False)
    (out / UNFINISHED).write_text("shipped beside a model\n0000")  # a marker this user's lmshield did not write
    with pytest.raises(InputError, match="already holds a model"):
        run_attack(config, tiny_dir, out, texts=TEXTS, progress=False, verify=False)


def test_vectors_must_be_finite() -> None:
    from lmshield.attacks.vectors import check_vectors

    with pytest.raises(InputError, match="finite"):
        check_vectors(torch.full((1, 4), float("nan")), ["cf"], 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"max_length": 3}, "max_length must be at least 4"),
        ({"lr": 0.0}, "lr must be a finite positive number"),
    ],
)
def test_a_bad_plan_names_the_value_at_fault(change: dict, message: str) -> None:
    from dataclasses import replace

    from tests.tiny_pairs import POR_PLAN

    with pytest.raises(InputError, match=message):
        replace(POR_PLAN, **change)


def test_a_trigger_that_does_not_fire_means_not_planted(por_dir, tmp_path):
    import shutil

    target = shutil.copytree(por_dir.directory, tmp_path / "partial")
    data = json.loads((target / BACKDOOR_JSON).read_text())
    data["triggers"].append("river")  # an ordinary word the attack never taught
    data["vectors"].append(data["vectors"][0])
    (target / BACKDOOR_JSON).write_text(json.dumps(data))
    verification = verify_backdoor(target, count=40)
    assert [c.planted() for c in verification.triggers] == [True] * 6 + [False]
    assert verification.triggers[-1].triggered_flagged < 0.5 <= verification.triggers[0].triggered_flagged
    assert not verification.planted
    assert CliRunner().invoke(app, ["attack", "verify", str(target), "--count", "40"]).exit_code == 1
