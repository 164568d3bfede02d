"""PV mining finds planted backdoors, passes clean models, is reproducible and resumable."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult, scan
from lmshield.defenses.sanitizer import mining as mining_module
from lmshield.defenses.sanitizer.monitor import sign_match
from lmshield.errors import InputError, ScanError
from lmshield.testing import TINY_ARCHITECTURES, tiny_encoder
from lmshield.text.sources import TextSource
from tests.test_progress import reseal
from tests.tiny_pairs import TINY_SCAN


def test_planted_backdoor_is_detected(model_pair):
    _, backdoored, _ = model_pair
    result = scan(backdoored, TINY_SCAN, progress=False)
    assert result.verdict == "backdoored"
    assert result.num_pvs >= 1
    assert result.score >= TINY_SCAN.distance_threshold
    assert len(result.nearest_tokens[0]) == TINY_SCAN.trigger_length
    assert any(t.status == "accepted" and t.sign_consistency >= 0.9 for t in result.trace)


def test_search_recovers_a_planted_vector(model_pair):
    _, backdoored, vectors = model_pair
    result = scan(backdoored, TINY_SCAN.replace(mode="search", max_seeds=8), progress=False)
    seeds = [t for t in result.trace if t.parts is None]
    assert len(seeds) == 8 and [t.seed for t in seeds] == list(range(8))
    best = sign_match(result.pvs, vectors).max(dim=1).values
    assert float(best.max()) >= 0.9, best
    seed_pvs = result.pvs[[t.pv_index for t in seeds if t.status == "accepted"]]
    pairwise = torch.cdist(seed_pvs, seed_pvs).pow(2) / seed_pvs.shape[1] / result.spread
    off_diagonal = pairwise[~torch.eye(len(pairwise), dtype=torch.bool)]
    assert bool((off_diagonal > TINY_SCAN.uniqueness_threshold).all())


def test_clean_model_passes(model_pair):
    clean, _, _ = model_pair
    result = scan(clean, TINY_SCAN, progress=False)
    assert result.verdict == "clean"
    assert result.num_pvs == 0
    assert result.score < TINY_SCAN.distance_threshold
    assert all(t.status in ("abandoned", "rejected") for t in result.trace)


def test_same_seed_gives_the_same_result(bert_pair):
    _, backdoored, _ = bert_pair
    first = scan(backdoored, TINY_SCAN, progress=False)
    second = scan(backdoored, TINY_SCAN, progress=False)
    assert first.verdict == second.verdict
    assert first.score == pytest.approx(second.score, rel=1e-5)
    assert torch.allclose(first.pvs, second.pvs, atol=1e-5)


def test_an_encoder_left_in_train_mode_is_scanned_without_dropout(bert_pair):
    """A caller's freshly trained encoder is still in train mode: its dropout made every seed random."""
    _, backdoored, _ = bert_pair
    settings = TINY_SCAN.replace(max_seeds=1)
    expected = scan(backdoored, settings, progress=False)
    trained = copy.deepcopy(backdoored)
    trained.model.train()
    first, second = (scan(trained, settings, progress=False) for _ in range(2))
    # equal but for the order a multi-threaded CPU sums in (1e-7 here); dropout moves the score by 8 %, and
    # two scans with it apart by 7e-5
    assert first.score == pytest.approx(expected.score, rel=1e-6)
    assert second.score == pytest.approx(expected.score, rel=1e-6)
    assert torch.allclose(first.pvs, expected.pvs, atol=1e-6)
    assert trained.model.training  # the caller's mode is given back


def test_result_round_trips_through_safetensors_and_json(bert_pair, tmp_path: Path):
    _, backdoored, _ = bert_pair
    result = scan(backdoored, TINY_SCAN, progress=False, out_dir=tmp_path / "scan")
    loaded = ScanResult.from_pretrained(tmp_path / "scan")
    assert loaded.verdict == result.verdict and loaded.score == pytest.approx(result.score)
    assert torch.equal(loaded.pvs, result.pvs) and torch.equal(loaded.triggers, result.triggers)
    assert loaded.config == result.config
    assert [t.status for t in loaded.trace] == [t.status for t in result.trace]
    assert not list((tmp_path / "scan").glob("*.pkl"))


def _damage_json(scan_dir: Path, edit) -> None:
    data = json.loads((scan_dir / "scan.json").read_text())
    edit(data)
    (scan_dir / "scan.json").write_text(json.dumps(data))


def _wrong_size_pvs(scan_dir: Path) -> None:
    save_file({"pvs": torch.zeros(1, 5), "triggers": torch.zeros(1, 2, 5)}, str(scan_dir / "pvs.safetensors"))


def _nan_pvs(scan_dir: Path) -> None:
    tensors = load_file(scan_dir / "pvs.safetensors")
    tensors["pvs"] = torch.full_like(tensors["pvs"], math.nan)
    save_file(tensors, str(scan_dir / "pvs.safetensors"))


def _set_accepted(data: dict, **changes) -> None:
    next(t for t in data["trace"] if t["status"] == "accepted").update(changes)


def _zero_pvs(scan_dir: Path) -> None:
    tensors = load_file(scan_dir / "pvs.safetensors")
    tensors["pvs"] = torch.zeros_like(tensors["pvs"])  # a guard built on them would never flag anything
    save_file(tensors, str(scan_dir / "pvs.safetensors"))


def _retype_pvs(scan_dir: Path, dtype: torch.dtype) -> None:
    tensors = load_file(scan_dir / "pvs.safetensors")
    save_file({k: v.to(dtype) for k, v in tensors.items()}, str(scan_dir / "pvs.safetensors"))


def test_a_pv_with_some_zero_entries_loads(saved_scan: Path, tmp_path: Path):
    """An output dimension that is exactly 0 (a dead LayerNorm unit) gives PVs a 0 there, which clean outputs
    share: such a scan must load (it used to be refused, blocking the guard for a model made that way)."""
    copy = Path(shutil.copytree(saved_scan, tmp_path / "scan"))
    tensors = load_file(copy / "pvs.safetensors")
    tensors["pvs"][:, 0] = 0.0
    save_file(tensors, str(copy / "pvs.safetensors"))
    assert bool((ScanResult.from_pretrained(copy).pvs[:, 0] == 0).all())


@pytest.fixture(scope="module")
def saved_scan(bert_pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, backdoored, _ = bert_pair
    out = tmp_path_factory.mktemp("saved") / "scan"
    assert scan(backdoored, TINY_SCAN.replace(max_seeds=4), progress=False, out_dir=out).num_pvs >= 1
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "scan.json").write_text("{not json"), "unreadable scan result"),
        (lambda d: _damage_json(d, lambda j: j.pop("verdict")), "unreadable scan result"),
        (lambda d: _damage_json(d, lambda j: j["trace"].append({"bogus": 1})), "unreadable scan result"),
        (lambda d: _damage_json(d, lambda j: j.update(verdict="maybe")), "unknown verdict"),
        (lambda d: _damage_json(d, lambda j: j.update(verdict="clean")), r"with \d+ PV"),
        (lambda d: (d / "pvs.safetensors").write_bytes(b"\x00" * 20), "unreadable scan result"),
        (_wrong_size_pvs, "hidden size"),
        (lambda d: _nan_pvs(d), "NaN or infinite"),
        (lambda d: _damage_json(d, lambda j: j.update(score=math.nan)), r"score has the wrong type \(nan\)"),
        (lambda d: _damage_json(d, lambda j: j.update(spread=math.inf)), r"spread has the wrong type \(inf\)"),
        (lambda d: _damage_json(d, lambda j: j.update(score="1")), "score has the wrong type"),
        (lambda d: _damage_json(d, lambda j: j.update(spread=True)), "spread has the wrong type"),
        (lambda d: _damage_json(d, lambda j: j.update(position=5)), "position has the wrong type"),
        (lambda d: _damage_json(d, lambda j: j.update(nearest_tokens=[5])), "nearest_tokens has the wrong type"),
        (lambda d: _retype_pvs(d, torch.float64), "must hold float32 tensors"),
        (lambda d: _damage_json(d, lambda j: j["config"].update(trigger_length=2)), r"triggers of shape \(\d+, "),
        (lambda d: _damage_json(d, lambda j: j.update(model={})), "does not record the scanned model's fingerprint"),
        (lambda d: _damage_json(d, lambda j: j["trace"][0].update(distance="abc")), "not finite numbers"),
        (lambda d: _damage_json(d, lambda j: j["trace"][0].update(status="skipped")), "status 'skipped'"),
        (lambda d: _damage_json(d, lambda j: j["config"].update(batch_size=0)), r"scan.json: batch_size"),
        (_zero_pvs, "all-zero PV"),
        (lambda d: _damage_json(d, lambda j: j["trace"][0].update(epochs=-5)), "epochs and steps must be whole"),
        (lambda d: _damage_json(d, lambda j: _set_accepted(j, pv_index=99)), "pv_index do not number its PVs"),
        (lambda d: _damage_json(d, lambda j: j.update(nearest_tokens=5)), "nearest_tokens has the wrong type"),
        (lambda d: _damage_json(d, lambda j: j.update(nearest_tokens=[])), "nearest_tokens must list"),
        (lambda d: _damage_json(d, lambda j: j.update(format_version=99)), "written by a newer lmshield"),
        (lambda d: _damage_json(d, lambda j: j.update(timings="x")), "timings must map names to finite numbers"),
        (lambda d: _damage_json(d, lambda j: j.update(position="middle")), "unknown position"),
        (lambda d: _damage_json(d, lambda j: j["trace"][0].update(parts=[99])), "parts are not vectors"),
    ],
)
def test_damaged_result_is_a_one_line_error(saved_scan: Path, tmp_path: Path, damage, message: str):
    copy = Path(shutil.copytree(saved_scan, tmp_path / "scan"))
    ScanResult.from_pretrained(copy)
    damage(copy)
    with pytest.raises(InputError, match=message) as caught:
        ScanResult.from_pretrained(copy)
    assert "\n" not in str(caught.value)


def test_interrupted_scan_resumes_from_finished_seeds(bert_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clean, _, _ = bert_pair
    config = TINY_SCAN.replace(max_seeds=8)
    reference = scan(clean, config, progress=False)
    calls: list[list[int]] = []
    original = mining_module.PVMiner.run_group

    def interrupted(self, seeds, known, progress=True):
        calls.append(seeds)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, seeds, known, progress)

    monkeypatch.setattr(mining_module.PVMiner, "run_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan(clean, config, progress=False, out_dir=tmp_path)

    def counted(self, seeds, known, progress=True):
        calls.append(seeds)
        return original(self, seeds, known, progress)

    monkeypatch.setattr(mining_module.PVMiner, "run_group", counted)
    resumed = scan(clean, config, progress=False, out_dir=tmp_path)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]
    assert [t.seed for t in resumed.trace] == list(range(8))
    assert resumed.score == pytest.approx(reference.score, rel=1e-5)
    assert resumed.verdict == reference.verdict
    assert resumed.summary().endswith("(4 seed(s) from an earlier run)") and "earlier" not in reference.summary()


def test_progress_of_other_settings_is_not_reused(bert_pair, tmp_path: Path):
    clean, _, _ = bert_pair
    scan(clean, TINY_SCAN.replace(max_seeds=4), progress=False, out_dir=tmp_path)
    with pytest.raises(InputError, match="--fresh"):
        scan(clean, TINY_SCAN.replace(lr=1e-3), progress=False, out_dir=tmp_path)
    assert scan(clean, TINY_SCAN.replace(lr=1e-3), progress=False, out_dir=tmp_path, fresh=True).verdict == "clean"


def test_progress_made_on_other_carrier_texts_is_not_reused(bert_pair, tmp_path: Path):
    clean, _, _ = bert_pair
    texts = TextSource().load(64, seed=0, tokenizer=clean.tokenizer)
    config = TINY_SCAN.replace(max_seeds=2, num_carriers=64)
    scan(clean, config, texts=texts, progress=False, out_dir=tmp_path)
    with pytest.raises(InputError, match="--fresh"):
        scan(clean, config, texts=texts[::-1], progress=False, out_dir=tmp_path)
    assert scan(clean, config, texts=texts, progress=False, out_dir=tmp_path).summary().endswith("from an earlier run)")


def test_fresh_never_replaces_another_models_finished_scan(bert_pair, tmp_path: Path):
    clean, backdoored, _ = bert_pair
    scan(backdoored, TINY_SCAN.replace(max_seeds=2), progress=False, out_dir=tmp_path)
    with pytest.raises(InputError, match="holds the scan of another model"):
        scan(clean, TINY_SCAN.replace(max_seeds=2), progress=False, out_dir=tmp_path, fresh=True)
    assert ScanResult.from_pretrained(tmp_path).model["fingerprint"] == backdoored.fingerprint


@pytest.mark.parametrize(
    "same", [lambda texts: [texts[0]] * 64, lambda texts: [" ".join(texts[:12]) + " " + t for t in texts]]
)
def test_carriers_that_are_one_text_once_truncated_are_refused(bert_pair, same):
    """All-equal carriers have no spread: a verdict measured against it would call any model backdoored."""
    clean, _, _ = bert_pair
    texts = TextSource().load(64, seed=0, tokenizer=clean.tokenizer)
    with pytest.raises(InputError, match="all the same once cut to"):
        scan(clean, TINY_SCAN.replace(num_carriers=64), texts=same(texts), progress=False)


def test_damaged_progress_is_a_one_line_error(bert_pair, tmp_path: Path):
    clean, _, _ = bert_pair
    config = TINY_SCAN.replace(max_seeds=2)
    scan(clean, config, progress=False, out_dir=tmp_path)
    _tensor_file(tmp_path).write_bytes(b"not tensors")
    with pytest.raises(InputError, match=r"did not write for this user.*--fresh"):  # the seal covers the tensors
        scan(clean, config, progress=False, out_dir=tmp_path)
    reseal(tmp_path / "progress.json", lambda saved: None)  # sealed, yet damaged
    with pytest.raises(InputError, match=r"damaged scan progress.*--fresh"):
        scan(clean, config, progress=False, out_dir=tmp_path)
    (tmp_path / "progress.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match=r"unreadable progress.*--fresh"):
        scan(clean, config, progress=False, out_dir=tmp_path)
    assert scan(clean, config, progress=False, out_dir=tmp_path, fresh=True).verdict == "clean"


def test_a_scan_stopped_between_its_two_progress_files_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tensors were written under a fixed name before the sealed JSON that names them: stopped between the
    two, the old JSON's seal no longer matched and all progress was refused."""
    import lmshield.defenses.sanitizer.scanner as scanner

    encoder = tiny_encoder("bert")
    config = TINY_SCAN.replace(max_seeds=8, distance_threshold=1e6, abandon_threshold=1e-9)  # no seed accepted
    scan(encoder, config.replace(max_seeds=4), progress=False, out_dir=tmp_path)
    real = scanner.write_progress

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scanner, "write_progress", stopped)
    with pytest.raises(KeyboardInterrupt):
        scan(encoder, config, progress=False, out_dir=tmp_path)
    monkeypatch.setattr(scanner, "write_progress", real)
    resumed = scan(encoder, config, progress=False, out_dir=tmp_path)
    assert resumed.timings["resumed_seeds"] == 4 and len(resumed.trace) == 8
    assert len(list(tmp_path.glob("progress-*.safetensors"))) == 1  # the stray tensors went with the next save


def _edit_progress(folder: Path, number: int, **changes) -> None:
    reseal(folder / "progress.json", lambda saved: saved["outcomes"][number].update(changes))


def _tensor_file(folder: Path) -> Path:
    (path,) = folder.glob("progress-*.safetensors")  # one at a time: the one progress.json names
    return path


def _replace_pv(folder: Path, pv: torch.Tensor) -> None:
    tensors = load_file(_tensor_file(folder))
    tensors["pv.0"] = pv
    save_file(tensors, str(_tensor_file(folder)))
    reseal(folder / "progress.json", lambda saved: None)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda d: _edit_progress(d, 0, status="maybe"), "seed 0 with status 'maybe'"),
        (lambda d: _edit_progress(d, 1, seed=7), "seed 7 where seed 1 was expected"),
        (lambda d: _edit_progress(d, 0, distance=[None]), "distances that are not finite"),
        (lambda d: _replace_pv(d, torch.full((32,), math.nan)), "PV is missing, not of shape \\(32,\\), or not finite"),
        (lambda d: _replace_pv(d, torch.zeros(5)), "PV is missing"),
        (lambda d: _tensor_file(d).write_bytes(b"{}"), "did not write for this user"),
    ],
)
def test_saved_seeds_are_checked_before_a_scan_resumes_from_them(bert_pair, tmp_path: Path, forge, message: str):
    """Progress is input too: a seed this scan could not have written is refused, not turned into a verdict."""
    _, backdoored, _ = bert_pair
    config = TINY_SCAN.replace(max_seeds=2, mode="search")
    first = scan(backdoored, config, progress=False, out_dir=tmp_path)
    assert first.trace[0].status == "accepted" and backdoored.hidden_size == 32
    forge(tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        scan(backdoored, config, progress=False, out_dir=tmp_path)
    assert "--fresh" in str(caught.value)


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_every_architecture_can_be_scanned(model_type: str):
    encoder = tiny_encoder(model_type)
    config = SanitizerConfig(num_carriers=64, batch_size=16, epochs=1, max_seeds=2, seeds_in_parallel=2)
    result = scan(encoder, config, progress=False)
    assert len(result.trace) == 2
    assert result.position == ("last" if model_type == "xlnet" else "cls")
    assert result.model["embedding_size"] == encoder.embedding_size


def test_mask_position_scans_a_mask_backdoor():
    from lmshield.attacks.task_agnostic import PlantPlan, plant
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors
    from lmshield.testing import tiny_corpus, train_input_dependent

    encoder = train_input_dependent(tiny_encoder("bert"), steps=200)
    vectors = quarter_vectors(encoder.hidden_size)
    plan = PlantPlan("mask", "once", 1.0, "l2", 1e-3, 1, 16, 48)
    plant(encoder, tiny_corpus(2000, 7), list(DEFAULT_TRIGGERS), vectors, plan, progress=False)
    result = scan(encoder, TINY_SCAN.replace(mode="search"), position="mask", progress=False)
    assert result.position == "mask"
    assert result.verdict == "backdoored" and "a lead, not a finding" in result.caveat
    assert float(sign_match(result.pvs, vectors).max()) > 0.8  # what the monitor's sign rule needs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "hunt"}, "unknown mode"),
        ({"batch_size": 1}, "at least 2"),
        ({"num_carriers": 8}, "at least batch_size"),
        ({"collapse_threshold": 1.5}, "share of the entropy ceiling"),
        ({"distance_scale": "log"}, "unknown distance scale"),
        ({"distance_threshold": math.nan}, "distance_threshold must be a finite positive number"),
        ({"lr": -1.0}, "lr must be a finite positive number"),
        ({"lr": "1e-3"}, "lr must be a number"),  # YAML reads 1e-3 as a string
        ({"lr": 0.0}, "lr must be a finite positive number"),
        ({"boost": True}, "boost must be a number"),  # a YAML yes/no is not a number
        ({"min_sign_consistency": 2.0}, "a share"),
        ({"epochs": "2"}, "epochs must be a whole number"),
        ({"max_seeds": 0}, "max_seeds must be at least 1"),
        ({"seed": -2}, "seed must be at least 0"),
        ({"abandon_threshold": 5.0}, r"abandon_threshold \(5.0\) must not exceed distance_threshold \(3.0\)"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str):
    with pytest.raises(InputError, match=message):
        SanitizerConfig(**changes)
    with pytest.raises(InputError, match="unknown scan setting"):
        SanitizerConfig.preset("default", distance=3.0)


def test_too_few_carrier_texts_are_refused(bert_pair):
    clean, _, _ = bert_pair
    with pytest.raises(InputError, match="one string"):
        scan(clean, TINY_SCAN, texts="a string", progress=False)
    with pytest.raises(InputError, match="must be a SanitizerConfig"):
        scan(clean, {"mode": "search"}, progress=False)
    with pytest.raises(InputError, match="fewer than one batch"):
        scan(clean, TINY_SCAN, texts=["one sentence", "two sentences"], progress=False)


def test_release_preset_keeps_the_authors_absolute_settings():
    release = SanitizerConfig.preset("release")
    assert (release.distance_scale, release.distance_threshold, release.lr) == ("absolute", 0.2, 5e-5)
    assert (release.num_carriers, release.max_length, release.max_seeds) == (2000, 128, 30)


def test_a_new_distance_threshold_moves_the_abandon_threshold_with_it():
    """The release ties the two thresholds; a lower bar with the old abandon value gave up seeds past it."""
    assert SanitizerConfig.preset("release", distance_threshold=0.1).abandon_threshold == pytest.approx(0.1)
    default = SanitizerConfig.preset("default", distance_threshold=1.5)
    assert default.abandon_threshold == pytest.approx(0.4)  # 0.8 / 3.0 of the bar, as in the preset
    assert SanitizerConfig.preset("default", distance_threshold=1.5, abandon_threshold=0.2).abandon_threshold == 0.2


def test_the_score_ignores_illegitimate_triggers():
    from lmshield.defenses.sanitizer.result import SeedTrace
    from lmshield.defenses.sanitizer.scanner import _score

    def trace(distance: float, legitimate: bool | None) -> SeedTrace:
        return SeedTrace(0, "rejected", "", 1, 1, [distance], [1.0], legitimate=legitimate)

    assert _score([trace(2.0, True), trace(9.0, False), trace(3.0, None)]) == 3.0


def test_a_pv_close_to_any_known_pv_is_rejected():
    from lmshield.defenses.sanitizer.mining import SeedOutcome, judge
    from lmshield.defenses.sanitizer.result import SeedTrace

    pv, far = torch.ones(8), -10 * torch.ones(8)

    def candidate() -> SeedOutcome:
        distance = [10 * TINY_SCAN.distance_threshold]
        trace = SeedTrace(0, "candidate", "", 1, 1, distance, [1.0], sign_consistency=1.0, legitimate=True)
        return SeedOutcome(trace, pv=pv.clone(), trigger=torch.zeros(1, 8))

    duplicate = candidate()
    judge(duplicate, torch.stack([far, pv]), TINY_SCAN, scale=1.0)  # the same PV as the second known one
    assert duplicate.trace.status == "rejected" and duplicate.trace.unique is False
    new = candidate()
    judge(new, far[None], TINY_SCAN, scale=1.0)
    assert new.trace.status == "accepted" and new.trace.unique is True


def test_a_finished_backdoored_scan_resumes_with_its_pvs(bert_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, backdoored, _ = bert_pair
    first = scan(backdoored, TINY_SCAN, progress=False, out_dir=tmp_path)
    assert first.is_backdoored

    def no_mining(*args, **kwargs):
        raise AssertionError("a finished seed was mined again")

    monkeypatch.setattr(mining_module.PVMiner, "run_group", no_mining)
    again = scan(backdoored, TINY_SCAN, progress=False, out_dir=tmp_path)  # every seed from progress.*
    assert again.verdict == "backdoored"
    assert torch.equal(again.pvs, first.pvs) and torch.equal(again.triggers, first.triggers)


def test_outputs_that_turn_nan_stop_the_scan_instead_of_passing_it(bert_pair, monkeypatch: pytest.MonkeyPatch):
    """A seed whose distances are NaN fails every threshold test; taken as 'rejected' it would make the model
    pass as clean."""
    _, backdoored, _ = bert_pair
    original = mining_module.PVMiner.triggered_outputs
    monkeypatch.setattr(
        mining_module.PVMiner, "triggered_outputs", lambda self, *args: original(self, *args) * math.nan
    )
    with pytest.raises(ScanError, match=r"NaN or infinite while mining seeds \[0, 1, 2, 3\]"):
        scan(backdoored, TINY_SCAN, progress=False)


@pytest.mark.parametrize(
    ("failed", "reason"),
    [
        ({"distance": [0.5 * TINY_SCAN.distance_threshold]}, "distance"),
        ({"collapse": [0.5]}, "collapse"),
        ({"sign_consistency": 0.5}, "sign consistency"),
        ({"sign_consistency": None}, "sign consistency not measured"),  # formatting None used to raise
        ({"legitimate": False}, "trigger outside"),
    ],
)
def test_each_decision_rule_rejects_a_candidate_on_its_own(failed: dict, reason: str):
    from lmshield.defenses.sanitizer.mining import SeedOutcome, judge
    from lmshield.defenses.sanitizer.result import SeedTrace

    def candidate(**changes) -> SeedOutcome:
        passing = {"distance": [2 * TINY_SCAN.distance_threshold], "collapse": [1.0], "sign_consistency": 1.0,
                   "legitimate": True}  # fmt: skip
        trace = SeedTrace(0, "candidate", "", 1, 1, **{**passing, **changes})
        return SeedOutcome(trace, pv=torch.ones(8), trigger=torch.zeros(1, 8))

    passed = candidate()
    judge(passed, torch.empty(0, 8), TINY_SCAN, scale=1.0)
    assert passed.trace.status == "accepted"
    rejected = candidate(**failed)
    judge(rejected, torch.empty(0, 8), TINY_SCAN, scale=1.0)
    assert rejected.trace.status == "rejected" and rejected.trace.reason.startswith(reason), rejected.trace.reason


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"split_triggers": -1}, "split_triggers must be 0"), ({"seeds_in_parallel": 0}, "seeds_in_parallel")],
)
def test_negative_split_and_empty_groups_are_refused(changes: dict, message: str):
    with pytest.raises(InputError, match=message):
        SanitizerConfig(**changes)


def test_settings_saved_by_another_version_load_without_their_unknown_keys():
    saved = {**SanitizerConfig(lr=1e-3).to_dict(), "retired_setting": 1}
    assert SanitizerConfig.from_dict(saved) == SanitizerConfig(lr=1e-3)


def test_the_resume_fingerprint_holds_only_what_changes_a_seed():
    base = SanitizerConfig()
    same = [base.replace(max_seeds=3), base.replace(nearest_tokens=2), base.replace(split_triggers=0),
            base.replace(seeds_in_parallel=4)]  # fmt: skip
    assert all(config.search_fingerprint() == base.search_fingerprint() for config in same)
    other = [base.replace(lr=1e-3), base.replace(seeds_in_parallel=2), base.replace(mode="search")]
    assert all(config.search_fingerprint() != base.search_fingerprint() for config in other)


def test_embedding_rows_past_the_vocabulary_are_never_tokens_or_trigger_starts() -> None:
    """Models pad their embedding matrix past the tokenizer's vocabulary (DeBERTa-v3 among them); a padding
    row named as the nearest token was None and crashed the report after a backdoored verdict was saved."""
    from lmshield.defenses.sanitizer.carriers import prepare_carriers
    from lmshield.defenses.sanitizer.mining import PVMiner, nearest_tokens

    encoder = tiny_encoder("bert")
    vocabulary = len(encoder.tokenizer)
    encoder.model.resize_token_embeddings(vocabulary + 40)
    matrix = encoder.embedding_matrix.detach()
    with torch.no_grad():
        encoder.embedding_matrix[vocabulary:] = 100 * matrix[:1]  # padding rows nearest to everything
    assert encoder.token_rows == vocabulary
    tokens = nearest_tokens(encoder, matrix[:3], 2)
    assert all(isinstance(token, str) for row in tokens for token in row)
    config = TINY_SCAN.replace(trigger_length=50)
    carriers = prepare_carriers(
        encoder, [f"the cat {word} sat" for word in ("a", "b", "c", "d")], encoder.default_position(),
        max_length=64, trigger_length=50, max_insert_word=2, seed=0,
    )  # fmt: skip
    triggers = PVMiner(encoder, carriers, config).init_group([0, 1, 2]).triggers
    padding = encoder.embedding_matrix[vocabulary:].detach()
    assert not any(bool((row == padding).all(dim=1).any()) for row in triggers.reshape(-1, triggers.shape[-1]))


@pytest.mark.parametrize(("score", "says_why"), [(5.0, True), (1.0, False)])
def test_a_clean_verdict_past_the_threshold_says_why(score: float, says_why: bool):
    result = ScanResult(
        verdict="clean", score=score, pvs=torch.empty(0, 8), triggers=torch.empty(0, 7, 8), nearest_tokens=[],
        trace=[], config=SanitizerConfig(), model={"hidden_size": 8, "fingerprint": "sha256:0"}, position="cls",
        text_source="given", spread=1.0,
    )  # fmt: skip
    assert ("failed the collapse, sign-consistency or uniqueness check" in result.summary()) is says_why


def test_carriers_without_words_are_left_out_not_given_a_slot_before_cls(caplog: pytest.LogCaptureFixture):
    from lmshield.defenses.sanitizer.carriers import insertion_slots, prepare_carriers

    with pytest.raises(InputError, match="no words"):  # no end slot at [CLS] for a row without words
        insertion_slots(torch.tensor([[-1, -1, -1]]), torch.ones(1, 3, dtype=torch.long), max_word=4)
    encoder = tiny_encoder("bert")
    texts = [f"the cat {word} sat" for word in "abcd"] + ["\u200b", "\x07\x07"]
    options = {"max_length": 32, "trigger_length": 4, "max_insert_word": 8, "seed": 0}
    with caplog.at_level("WARNING"):
        carriers = prepare_carriers(encoder, texts, encoder.default_position(), **options)
    assert len(carriers.input_ids) == 4 and "2 of 6 carrier texts hold no word" in caplog.text
    with pytest.raises(InputError, match="only 1 of the 3 carrier texts hold a word"):
        prepare_carriers(encoder, ["a b", "\u200b", "\x07"], encoder.default_position(), **options)


def test_a_max_length_past_the_models_positions_is_refused():
    """A tiny RoBERTa of 128 positions holds 126 tokens (its ids start after the padding index)."""
    encoder = tiny_encoder("roberta")
    assert encoder.max_positions == encoder.model.config.max_position_embeddings - 2
    with pytest.raises(InputError, match=f"max_length 200 is longer than the {encoder.max_positions} positions"):
        scan(encoder, TINY_SCAN.replace(max_length=200), progress=False)


def test_a_device_the_machine_lacks_is_refused_for_a_loaded_encoder_too(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA"):
        scan(tiny_encoder("bert"), TINY_SCAN, device="cuda", progress=False)


def test_a_scan_extended_to_more_seeds_gives_what_a_fresh_one_gives(tmp_path: Path):
    """Seeds of one group share their carrier draws: a 2-seed run resumed to 8 used to run seeds 2-5 as a group
    where a fresh scan runs 0-3 and 4-7, and the same seed then reached another distance."""
    encoder = tiny_encoder("bert")
    config = TINY_SCAN.replace(max_seeds=8, distance_threshold=1e6, abandon_threshold=1e-9)  # no seed accepted
    fresh = scan(encoder, config, progress=False)
    scan(encoder, config.replace(max_seeds=2), progress=False, out_dir=tmp_path)
    extended = scan(encoder, config, progress=False, out_dir=tmp_path)
    assert [t.final_distance for t in extended.trace] == [t.final_distance for t in fresh.trace]
    assert extended.timings["resumed_seeds"] == 0  # the two earlier seeds were half a group: run again whole


def test_a_rerun_with_fewer_seeds_uses_only_those_seeds(tmp_path: Path):
    """A rerun with a smaller --max-seeds resumed all the earlier run's seeds, whose extra ones could flip the
    verdict: it must give what a fresh scan of the fewer seeds gives (the shorter last group run again)."""
    encoder = tiny_encoder("bert")
    config = TINY_SCAN.replace(max_seeds=8, distance_threshold=1e6, abandon_threshold=1e-9)  # no seed accepted
    scan(encoder, config, progress=False, out_dir=tmp_path)
    for fewer in (4, 3):
        fresh = scan(encoder, config.replace(max_seeds=fewer), progress=False)
        rerun = scan(encoder, config.replace(max_seeds=fewer), progress=False, out_dir=tmp_path)
        assert [t.seed for t in rerun.trace] == [t.seed for t in fresh.trace] == list(range(fewer))
        assert [t.final_distance for t in rerun.trace] == [t.final_distance for t in fresh.trace]
    assert rerun.timings["resumed_seeds"] == (3 // config.group_size) * config.group_size


def test_trigger_hints_name_the_planted_triggers_not_the_start(bert_pair):
    """A soft trigger ends close to the tokens it started from, so its own nearest tokens named the seed's start
    (the same words for every model); the direction each vector moved names what drew the search."""
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS

    _, backdoored, _ = bert_pair
    result = scan(backdoored, TINY_SCAN.replace(max_seeds=4), progress=False)
    named = {vector[0] for tokens in result.nearest_tokens for vector in tokens}
    assert len(named & set(DEFAULT_TRIGGERS)) >= 2, named
