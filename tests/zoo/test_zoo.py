from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmshield.cli.main import app
from lmshield.errors import InputError
from lmshield.zoo import build_zoo, load_spec, parse_spec, read_metadata, scan_zoo
from lmshield.zoo.scan import markdown_table, zoo_metrics
from tests.attacks.tiny_models import TINY_ATTACK, TINY_SCAN, make_labelled

TABLE_KEYS = ("model", "truth", "kind", "attack", "verdict", "score", "pvs")


def tiny_spec(base: Path, data: Path) -> dict:
    return {
        "name": "tiny",
        "base_model": str(base),
        "models": [
            {"kind": "original"},
            {"kind": "clean-continue", "attack": "por", "overrides": {**TINY_ATTACK, "num_texts": 320}},
            {"kind": "clean-finetune", "data": str(data), "overrides": {"lr": 1e-3, "max_length": 32}},
            {"kind": "attack", "attack": "por", "triggers": "default", "overrides": TINY_ATTACK},
        ],
        "scan": {"overrides": TINY_SCAN},
    }


@pytest.fixture(scope="module")
def zoo(zoo_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    spec_file = root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(zoo_base, make_labelled(root / "task.jsonl"))))
    out = root / "models"
    result = CliRunner().invoke(app, ["zoo", "build", str(spec_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return spec_file, out


@pytest.fixture(scope="module")
def scanned(zoo):
    """The zoo scanned once (the CLI test reuses its results folder, whichever test runs first)."""
    _, out = zoo
    return scan_zoo(out, progress=False)


def test_spec_expands_lists_into_models(tmp_path):
    spec = parse_spec(
        {
            "models": [
                {"kind": "original"},
                {
                    "kind": "attack",
                    "attack": ["por", "neuba", "btop"],
                    "triggers": ["default", "random"],
                    "seed": [0, 1],
                },
                {"kind": "attack", "attack": "por", "triggers": [["cf", "mn"]]},
            ]
        },
        tmp_path,
    )
    assert len(spec.entries) == 1 + 12 + 1
    assert [e.truth for e in spec.entries].count("backdoored") == 13
    assert spec.entries[-1].triggers == ["cf", "mn"]
    with pytest.raises(InputError, match="kind"):
        parse_spec({"models": [{"kind": "poison"}]})
    with pytest.raises(InputError, match="data"):
        parse_spec({"models": [{"kind": "clean-finetune"}]})
    with pytest.raises(InputError, match="unknown key"):
        parse_spec({"models": [{"kind": "original", "sed": 1}]})
    with pytest.raises(InputError, match="seed must be an integer"):
        parse_spec({"models": [{"kind": "original", "seed": "abc"}]})
    with pytest.raises(InputError, match="'preset' beside 'overrides'"):
        parse_spec({"models": [{"kind": "attack", "attack": "por", "overrides": {"preset": "fast"}}]})
    with pytest.raises(InputError, match=r"models\[0\]: .*epoch"):
        parse_spec({"models": [{"kind": "attack", "attack": "por", "overrides": {"epoch": 2}}]})
    with pytest.raises(InputError, match=r"models\[0\]: unknown attack 'pro'"):
        parse_spec({"models": [{"kind": "attack", "attack": "pro"}]})
    with pytest.raises(InputError, match="non-empty 'models' list"):
        parse_spec({"models": 5})  # was a TypeError traceback
    with pytest.raises(InputError, match="'text' must be a mapping"):
        parse_spec({"models": [{"kind": "original"}], "text": ["a"]})


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        ([1, 2], r"a trigger set is .* got 1$"),  # was a TypeError traceback
        ([[{"a": 1}]], r"got \[\{'a': 1\}\]$"),  # was planted as the text "{'a': 1}"
        ([["cf", 2]], r"got \['cf', 2\]$"),
        (5, r"got 5$"),
        ("cf", r"use default, random or a list of trigger sets, got 'cf'$"),
        ([], r"non-empty list"),
        ([[]], r"a trigger set is"),
        ([["cf", " cf"]], r"distinct non-empty"),
        ([[" "]], r"distinct non-empty"),
    ],
)
def test_triggers_must_be_strings(triggers, message: str):
    models = [{"kind": "original"}, {"kind": "attack", "attack": "por", "triggers": triggers}]
    with pytest.raises(InputError, match=r"^models\[1\]\.triggers: .*" + message):
        parse_spec({"models": models})


def test_trigger_sets_keep_keywords_and_make_a_lone_trigger_a_set():
    models = [{"kind": "attack", "attack": "por", "triggers": ["random", "cf", ["cf", "mn"], "default"]}]
    assert [e.triggers for e in parse_spec({"models": models}).entries] == ["random", ["cf"], ["cf", "mn"], "default"]
    assert [e.triggers for e in parse_spec({"models": [{"kind": "attack", "attack": "btop"}]}).entries] == ["default"]


def test_spec_numbers_with_an_exponent_and_no_dot_are_floats(tmp_path):
    """YAML 1.1 reads 1e-4 as a string, so the documented ``overrides: {lr: 1e-4}`` was refused as no number."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("models:\n  - kind: attack\n    attack: por\n    overrides: {lr: 1e-4}\n")
    assert load_spec(spec_file).entries[0].overrides == {"lr": 1e-4}
    from lmshield.zoo.spec import SpecLoader

    numbers = "[1e-4, 2e3, 2E+3, -1E5, 1.5e-4, .5e1, 1_0e2, 1.0, 7, 1e4x, 1e, e5, abc, '1e-4', 2e3.0, v1e2]"
    assert yaml.load(numbers, Loader=SpecLoader) == [
        *(1e-4, 2000.0, 2000.0, -1e5, 1.5e-4, 5.0, 1000.0, 1.0, 7),
        *("1e4x", "1e", "e5", "abc", "1e-4", "2e3.0", "v1e2"),
    ]
    assert yaml.safe_load("1e-4") == "1e-4"  # the loader of everyone else is left as it is


@pytest.mark.parametrize(
    ("scan", "message"),
    [
        ({"preset": "turbo"}, "unknown preset"),
        ({"position": "middle"}, "unknown position"),
        ({"overrides": {"max_seed": 2}}, "max_seed"),
        ({"overrides": {"max_seeds": 0}}, "max_seeds must be at least 1"),
        ({"mode": "search"}, "unknown key"),
        ({"text": {"generator": "foo"}}, "unknown text generator 'foo'"),
    ],
)
def test_the_scan_section_is_checked_when_the_spec_is_read(scan: dict, message: str):
    """A bad scan section passed zoo build and failed only at zoo scan, after every model was built."""
    with pytest.raises(InputError, match=r"^zoo spec: .*" + message):
        parse_spec({"models": [{"kind": "original"}], "scan": scan})
    good = {"preset": "fast", "position": "cls,mask,", "overrides": {"max_seeds": 4}, "text": {"generator": "vocab"}}
    assert parse_spec({"models": [{"kind": "original"}], "scan": good}).scan == good


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ({"generator": "foo"}, "unknown text generator 'foo'"),
        ({"foo": 1}, "unknown key"),
        ({"generator": "vocab", "split": "test"}, "split does not go with data-free carriers"),
        ({"texts": "a.txt", "dataset": "sst2"}, "not both"),
        ({"generator": None}, r"generator must be a string, got None$"),
    ],
)
def test_the_carrier_text_section_is_checked(tmp_path, text: dict, message: str):
    """An unknown key or generator in ``text`` was accepted, and the zoo built on the default carriers."""
    with pytest.raises(InputError, match=r"^zoo spec: text[:.] ?.*" + message):
        parse_spec({"models": [{"kind": "original"}], "text": text}, tmp_path)
    for good in ({"generator": "vocab"}, {"texts": "a.txt", "field": "text"}, {"dataset": "sst2", "column": "x"}):
        assert parse_spec({"models": [{"kind": "original"}], "text": good}, tmp_path).text == good


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("model_id,truth,kind,attack\n../victim,clean,original,\n", "not of the form id-NNNN"),
        ("model_id,truth,kind,attack\n/tmp/victim,clean,original,\n", "not of the form id-NNNN"),
        ("model_id,truth,kind,attack\nid-../../victim,clean,original,\n", "not of the form id-NNNN"),
        ("foo,bar\n1,2\n", "no column 'model_id'"),
        ("model_id,truth,kind,attack\n", "no models listed"),
        ("model_id,truth,kind,attack\nid-0001,maybe,original,\n", "truth 'maybe' is neither backdoored nor clean"),
        # copied into detection.csv, where a spreadsheet runs a cell that starts with = as a formula
        ('model_id,truth,kind,attack\nid-0001,clean,"=HYPERLINK(""http://x"")",\n', "kind '=HYPERLINK"),
        ("model_id,truth,kind,attack\nid-0001,backdoored,attack,=1+2\n", "attack '=1\\+2' is not one of '', 'por'"),
        ('model_id,truth,kind,attack,planted\nid-0001,clean,original,,"a | b"\n', "planted 'a | b' is not one of"),
    ],
)
def test_metadata_cannot_point_outside_the_zoo(tmp_path, metadata: str, message: str):
    (tmp_path / "METADATA.csv").write_text(metadata)
    with pytest.raises(InputError, match=message):
        read_metadata(tmp_path)


def test_build_writes_models_metadata_and_truth(zoo):
    _, out = zoo
    rows = read_metadata(out)
    assert [r["model_id"] for r in rows] == ["id-0000", "id-0001", "id-0002", "id-0003"]
    assert [r["truth"] for r in rows] == ["clean", "clean", "clean", "backdoored"]
    assert rows[3]["planted"] == "true"
    for index in range(3):
        assert (out / f"id-000{index}" / "clean.json").is_file()
    assert (out / "id-0003" / "backdoor.json").is_file()
    assert json.loads((out / "id-0001" / "clean.json").read_text())["weight_drift"] > 0
    assert json.loads((out / "id-0002" / "clean.json").read_text())["dev_accuracy"] > 0.5
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.parent.name: stat.S_IMODE(path.stat().st_mode) for path in out.glob("id-*/model.safetensors")}
    assert modes == dict.fromkeys(["id-0000", "id-0001", "id-0002", "id-0003"], 0o666 & ~umask)  # clean-continue too


def test_a_spec_of_nested_aliases_is_refused_before_it_expands(tmp_path):
    """A billion laughs: nine levels of aliases (9**9 values) took 30 s and 3 GB to end in a MemoryError; seven here
    (4.8 million values) keep the old code's failure quick."""
    levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"base_model: null\nmodels:\n  - kind: attack\n    triggers: [[{', '.join(levels)}]]\n")
    with pytest.raises(InputError, match=r"more than 100,000 values once its aliases"):
        load_spec(spec_file)
    spec_file.write_text("base_model: null\nmodels:\n  - &one {kind: original}\n  - *one\n")  # aliases still work
    assert len(load_spec(spec_file).entries) == 2


def test_build_never_takes_a_folder_of_other_files_for_a_zoo(zoo, tmp_path):
    spec_file, _ = zoo
    (tmp_path / "id-0000").mkdir()
    (tmp_path / "id-0000" / "weights-i-care-about.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["zoo", "build", str(spec_file), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "holds no zoo (zoo.json)" in result.output
    assert (tmp_path / "id-0000" / "weights-i-care-about.txt").is_file()


def test_build_never_removes_what_a_model_folder_links_to(zoo_base, tmp_path):
    """A shipped zoo whose unfinished id-0000 linked to a user's folder: the build removed that folder to start
    the model over, and wrote the model there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep me")
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "zoo.json").write_text("{}")
    (out / "id-0000").symlink_to(victim)
    with pytest.raises(InputError, match=r"symbolic link \(id-0000\)"):
        build_zoo(parse_spec({"base_model": str(zoo_base), "models": [{"kind": "original"}]}), out, progress=False)
    assert (victim / "keep.txt").read_text() == "keep me"


def test_a_zoo_folder_is_not_resumed_with_another_base_model(tmp_path):
    models = [{"kind": "original"}]
    (tmp_path / "zoo.json").write_text(parse_spec({"base_model": "tiny/one", "models": models}).to_json())
    (tmp_path / "id-0000").mkdir()
    (tmp_path / "id-0000" / "clean.json").write_text("{}")  # a model built from that spec
    with pytest.raises(InputError, match=r"another spec \(other base_model\)"):
        build_zoo(parse_spec({"base_model": "tiny/two", "models": models}), tmp_path, progress=False)
    other_text = {"base_model": "tiny/one", "models": models, "text": {"generator": "vocab"}}
    with pytest.raises(InputError, match=r"another spec \(other text\)"):  # the models' carrier text
        build_zoo(parse_spec(other_text), tmp_path, progress=False)
    other_model = {"base_model": "tiny/one", "models": [{"kind": "original", "seed": 3}]}
    with pytest.raises(InputError, match=r"another spec \(other entries of finished id-0000\)"):
        build_zoo(parse_spec(other_model), tmp_path, progress=False)


def test_a_corrected_entry_of_a_model_not_built_yet_resumes(zoo_base, tmp_path):
    """Model 0 built, model 1 failed: the spec corrected for model 1 was refused as 'another spec'."""
    spec = {"base_model": str(zoo_base), "models": [{"kind": "original"}, {"kind": "original", "seed": 1}]}
    (tmp_path / "zoo.json").write_text(parse_spec(spec).to_json())
    (tmp_path / "id-0000").mkdir()
    (tmp_path / "id-0000" / "clean.json").write_text(json.dumps({"entry": {"kind": "original"}}))
    (tmp_path / "id-0001").mkdir()  # failed before it finished
    corrected = {**spec, "models": [{"kind": "original"}, {"kind": "original", "seed": 2}]}
    rows = build_zoo(parse_spec(corrected), tmp_path, progress=False)
    assert [row["model_id"] for row in rows] == ["id-0000", "id-0001"]
    assert (tmp_path / "id-0001" / "clean.json").is_file()


def test_a_zoo_with_no_finished_model_takes_the_corrected_spec(zoo_base, tmp_path):
    """A build refused on a bad base model left zoo.json and an empty id-0000/; the corrected spec was then refused
    as 'another spec' although the old one never made a model."""
    models = [{"kind": "original"}]
    (tmp_path / "zoo.json").write_text(parse_spec({"base_model": "/nonexistent/model", "models": models}).to_json())
    (tmp_path / "id-0000").mkdir()
    rows = build_zoo(parse_spec({"base_model": str(zoo_base), "models": models}), tmp_path, progress=False)
    assert [row["model_id"] for row in rows] == ["id-0000"] and (tmp_path / "id-0000" / "clean.json").is_file()
    assert json.loads((tmp_path / "zoo.json").read_text())["base_model"] == str(zoo_base)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"base_model": "/nonexistent/model"}, r"base_model: /nonexistent/model: no such model directory"),
        ({"base_model": "no-such-org/no-such-model"}, r"base_model: no-such-org/no-such-model: not a local directory"),
        ({"text": {"texts": "missing.txt"}}, r"text\.texts: .*missing\.txt: no such file"),
        ({"models": [{"kind": "clean-finetune", "data": "missing.jsonl"}]}, r"data: .*missing\.jsonl: no such file"),
    ],
)
def test_a_refused_build_writes_nothing(zoo_base, tmp_path, bad: dict, message: str):
    """A base model or file that is not there was found only once zoo.json and id-0000/ were written."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"base_model": str(zoo_base), "models": [{"kind": "original"}], **bad}))
    out = tmp_path / "z"
    result = CliRunner().invoke(app, ["zoo", "build", str(spec_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert re.search("zoo spec: " + message, result.output), result.output
    assert not out.exists()
    with pytest.raises(InputError, match=message):
        build_zoo(load_spec(spec_file), out, progress=False)
    assert not out.exists()


def test_build_resumes_and_rebuilds_unfinished(zoo):
    spec_file, out = zoo
    (out / "id-0000" / "clean.json").unlink()  # as if interrupted before the marker was written
    started = time.perf_counter()
    rows = build_zoo(load_spec(spec_file), out, progress=False)
    assert time.perf_counter() - started < 10
    assert (out / "id-0000" / "clean.json").is_file() and len(rows) == 4


def test_an_attacked_model_counts_as_built_only_with_the_zoo_s_record(tmp_path):
    """Interrupted between the attack's manifest and the zoo's record in it, a model was skipped as built with an
    empty ``planted`` column; it is built again."""
    from lmshield.zoo.build import is_built

    manifest = tmp_path / "backdoor.json"
    cases = (("{not json", False), ("[]", False), ('{"extra": {}}', False), ('{"extra": {"zoo": {}}}', True))
    for text, built in cases:
        manifest.write_text(text)
        assert is_built(tmp_path) is built, text


def test_scan_measures_detection(zoo, scanned, tmp_path):
    _, out = zoo
    found = scanned
    verdicts = [r["verdict"] for r in found.rows]
    assert verdicts == ["clean", "clean", "clean", "backdoored"], found.markdown()
    assert [r["planted"] for r in found.rows] == ["", "", "", "true"]  # the build's check, beside the verdict
    assert "not planted" not in found.markdown()
    assert found.metrics.accuracy == 1.0 and found.metrics.fpr == 0.0 and found.metrics.fnr == 0.0
    assert found.metrics.roc_auc == 1.0
    for name in ("detection.csv", "detection.md", "metrics.json", "roc.png"):
        assert (found.directory / name).is_file()
    with (found.directory / "detection.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    again = scan_zoo(out, progress=False)  # resumed from scan.json, same table
    assert again.rows == found.rows
    with pytest.raises(InputError, match="other settings"):
        scan_zoo(out, overrides={"max_seeds": 2}, progress=False)
    for bad, message in (({"preset": "turbo"}, "unknown preset"), ({"position": "middle"}, "unknown position")):
        with pytest.raises(InputError, match=message):
            scan_zoo(out, results=tmp_path / "new", overrides=bad, progress=False)
        assert not (tmp_path / "new").exists()  # refused before anything is written
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "scan_settings.json").write_text("{not json")
    with pytest.raises(InputError, match=r"scan_settings\.json: unreadable"):
        scan_zoo(out, results=tmp_path / "broken", progress=False)


def test_a_refused_zoo_scan_leaves_nothing_that_blocks_the_corrected_rerun(zoo, scanned, tmp_path):
    _, out = zoo
    with pytest.raises(InputError, match="unknown executor"):
        scan_zoo(out, results=tmp_path / "r", executor="foo", progress=False)
    with pytest.raises(InputError, match="--num-cpus go with --executor ray"):
        scan_zoo(out, results=tmp_path / "r", num_cpus=0, progress=False)
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()  # settings written, then stopped before any model was scanned
    (tmp_path / "r" / "scan_settings.json").write_text(json.dumps({"preset": "other"}))
    shutil.copytree(out / "scans" / "id-0000", tmp_path / "r" / "id-0000")  # let the rerun be quick where it can
    with pytest.raises(InputError, match="other settings"):  # a scanned model's folder is there: refused
        scan_zoo(out, results=tmp_path / "r", progress=False)
    several = tmp_path / "several"  # the same at several positions, where each has its own subfolder
    several.mkdir()
    (several / "scan_settings.json").write_text(json.dumps({"preset": "other"}))
    shutil.copytree(out / "scans" / "id-0000", several / "id-0000" / "cls")
    with pytest.raises(InputError, match="other settings"):
        scan_zoo(out, results=several, overrides={"position": "cls,mask"}, progress=False)
    shutil.rmtree(tmp_path / "r" / "id-0000")
    assert len(scan_zoo(out, results=tmp_path / "r", progress=False).rows) == 4
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty"):
        scan_zoo(out, results=mine, progress=False)


def test_a_results_folder_of_other_files_is_refused_naming_results(tmp_path):
    """zoo scan names its output folder --results, not --out: the refusal says which option to change."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "METADATA.csv").write_text("model_id,truth,kind,attack\nid-0000,clean,original,\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["zoo", "scan", str(zoo), "--results", str(mine), "--quiet"])
    assert result.exit_code == 2 and "choose a new --results" in result.output, result.output
    assert "--out" not in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_fresh_rescans_every_model_with_the_new_settings(zoo, scanned, tmp_path):
    _, out = zoo
    results = tmp_path / "scans"
    shutil.copytree(out / "scans", results)
    before = (results / "id-0000" / "scan.json").read_text()
    found = scan_zoo(out, results=results, overrides={"max_seeds": 2}, progress=False, fresh=True)
    assert json.loads((results / "scan_settings.json").read_text())["overrides"]["max_seeds"] == 2
    rescanned = json.loads((results / "id-0000" / "scan.json").read_text())
    assert rescanned["config"]["max_seeds"] == 2 and rescanned != json.loads(before)
    assert len(found.rows) == 4


def test_a_scan_of_other_weights_is_never_taken_for_a_models_result(zoo, scanned, tmp_path):
    """A result whose fingerprint is not the model's (the model was rebuilt or replaced since) is rescanned."""
    _, out = zoo
    results = tmp_path / "scans"
    shutil.copytree(out / "scans", results)
    shutil.rmtree(results / "id-0003")
    shutil.copytree(results / "id-0000", results / "id-0003")  # a clean model's result in the backdoored one's place
    found = scan_zoo(out, results=results, progress=False)
    assert [r["verdict"] for r in found.rows] == ["clean", "clean", "clean", "backdoored"]


def test_fresh_discards_an_interrupted_scans_progress(zoo, scanned, tmp_path):
    """Progress a scan left in a model's folder (here of another job) is refused, unless fresh discards it."""
    from lmshield.progress import stamp, write_progress

    _, out = zoo
    results = tmp_path / "scans"
    write_progress(results / "id-0000" / "progress.json", {"identity": stamp({"settings": "other"}), "outcomes": []})
    with pytest.raises(InputError, match="--fresh"):
        scan_zoo(out, results=results, progress=False)
    found = scan_zoo(out, results=results, progress=False, fresh=True)
    assert [r["verdict"] for r in found.rows] == [r["verdict"] for r in scanned.rows]
    assert (results / "id-0000" / "scan.json").is_file()


def test_cli_scan_fresh_rescans_results_made_with_other_settings(zoo, scanned, tmp_path):
    _, out = zoo
    shutil.copytree(out / "scans", tmp_path / "scans")
    args = ["zoo", "scan", str(out), "--results", str(tmp_path / "scans"), "--max-seeds", "2", "--quiet"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--fresh" in refused.output
    result = CliRunner().invoke(app, [*args, "--fresh"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "scans" / "id-0000" / "scan.json").read_text())["config"]["max_seeds"] == 2


def test_cli_scan_prints_the_table(zoo, scanned, tmp_path):
    _, out = zoo
    shutil.copytree(out / "scans", tmp_path / "scans")
    result = CliRunner().invoke(app, ["zoo", "scan", str(out), "--results", str(tmp_path / "scans"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| accuracy | 1.000 |" in result.output


def test_ray_gives_the_sequential_table(zoo, tmp_path):
    ray = pytest.importorskip("ray")
    spec_file, out = zoo
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}}
    )
    try:
        rebuilt = tmp_path / "ray-zoo"
        shutil.copytree(out, rebuilt, ignore=shutil.ignore_patterns("scans"))
        for finished in ("id-0001", "id-0003"):  # Ray builds these two again, in parallel
            shutil.rmtree(rebuilt / finished)
        build_zoo(load_spec(spec_file), rebuilt, executor="ray", progress=False)
        assert _strip(read_metadata(rebuilt), "seconds") == _strip(read_metadata(out), "seconds")
        sequential = scan_zoo(out, progress=False)
        parallel = scan_zoo(rebuilt, executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert [_keys(r) for r in parallel.rows] == [_keys(r) for r in sequential.rows]


def _strip(rows: list[dict], key: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _keys(row: dict) -> dict:
    return {k: (round(row[k], 3) if k == "score" else row[k]) for k in TABLE_KEYS}


def test_several_positions_are_scanned_and_combined(tmp_path):
    from lmshield.testing import save_tiny, tiny_encoder
    from lmshield.zoo.scan import positions_of, scan_model

    assert positions_of({"position": "cls, mask"}) == ["cls", "mask"]
    assert positions_of({"position": ["cls"]}) == ["cls"]
    model = save_tiny(tiny_encoder("bert"), tmp_path / "model")
    tiny = {"num_carriers": 32, "batch_size": 16, "epochs": 1, "max_seeds": 1, "seeds_in_parallel": 1}
    settings = {"preset": "default", "position": "cls,mask", "overrides": tiny, "text": {}}
    row = scan_model({"model": str(model), "out": str(tmp_path / "scan"), "settings": settings, "progress": False})
    assert row["verdict"] == "clean" and row["pvs"] == 0
    assert (tmp_path / "scan" / "cls" / "scan.json").is_file()
    assert (tmp_path / "scan" / "mask" / "scan.json").is_file()


def test_several_positions_keep_the_highest_score_and_add_the_times(tmp_path):
    import torch

    from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult
    from lmshield.models.loading import folder_fingerprint
    from lmshield.testing import save_tiny, tiny_encoder
    from lmshield.zoo.scan import scan_model

    model = save_tiny(tiny_encoder("bert"), tmp_path / "model")
    for position, score, seconds in (("cls", 5.0, 1.0), ("mask", 2.0, 2.0)):
        ScanResult(
            verdict="clean",
            score=score,
            pvs=torch.empty(0, 8),
            triggers=torch.empty(0, 1, 8),
            nearest_tokens=[],
            trace=[],
            config=SanitizerConfig(),
            model={"hidden_size": 8, "fingerprint": folder_fingerprint(model)},
            position=position,
            text_source="given",
            spread=1.0,
            timings={"total_s": seconds},
        ).save_pretrained(tmp_path / "scan" / position)  # finished results: scan_model reads them back
    settings = {"preset": "default", "position": "cls,mask", "overrides": {}, "text": {}}
    row = scan_model({"model": str(model), "out": str(tmp_path / "scan"), "settings": settings, "progress": False})
    assert row == {"verdict": "clean", "score": 5.0, "pvs": 0, "seconds": 3.0}


def test_the_table_names_attacked_models_whose_backdoor_did_not_take():
    """A clean verdict on them counts as a miss, though there may be no backdoor to find: the reader must know."""
    rows = [
        {"model": "id-0000", "truth": "clean", "kind": "original", "attack": "", "planted": "", "verdict": "clean",
         "score": 0.5, "pvs": 0, "seconds": 1.0},
        {"model": "id-0001", "truth": "backdoored", "kind": "attack", "attack": "por", "planted": "false",
         "verdict": "clean", "score": 0.7, "pvs": 0, "seconds": 1.0},
    ]  # fmt: skip
    text = markdown_table(rows, zoo_metrics(rows))
    assert "| id-0001 | backdoored | attack | por | false | clean |" in text
    assert "Backdoor not planted when the zoo was built (its own check, `planted` false): id-0001." in text


def test_a_full_disk_never_leaves_a_model_list_cut_short(tmp_path, monkeypatch):
    """METADATA.csv was written in place: a disk that filled up after the first row left a list of one model,
    which a zoo scan then read as the whole zoo. The old list stays, and nothing is left beside it."""
    from lmshield.zoo import build

    row = {"model_id": "id-0000", "truth": "clean", "kind": "original", "attack": ""}
    rows = [row, {**row, "model_id": "id-0001"}]
    build.write_metadata(tmp_path, rows)

    class FullDisk(csv.DictWriter):
        def writerows(self, rows):
            self.writerow(rows[0])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(build.csv, "DictWriter", FullDisk)
    with pytest.raises(OSError, match="No space left"):
        build.write_metadata(tmp_path, [*rows, {**row, "model_id": "id-0002"}])
    assert [r["model_id"] for r in read_metadata(tmp_path)] == ["id-0000", "id-0001"]
    assert [p.name for p in tmp_path.iterdir()] == ["METADATA.csv"]
