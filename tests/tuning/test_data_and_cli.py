"""Labelled data from JSON Lines, JSON and CSV; the `lmshield tune` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmshield.cli.main import app
from lmshield.errors import EXIT_ERROR, InputError
from lmshield.tuning import LabelledData, TunedClassifier, read_labelled
from tests.tuning.helpers import tiny_task

runner = CliRunner()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_jsonl_with_default_fields(tmp_path: Path) -> None:
    data = read_labelled(
        _jsonl(tmp_path / "a.jsonl", [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    )
    assert data.texts == ["good", "bad"] and data.labels == [1, 0] and data.label_names == ["0", "1"]
    other = read_labelled(_jsonl(tmp_path / "b.json", [{"text": "x", "label": 2}, {"text": "y", "label": 0}]))
    assert other.num_labels == 3


def test_csv_and_string_labels_share_the_training_mapping(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("review,stars\nnice,pos\nawful,neg\nfine,pos\n")
    data = read_labelled(train, text_field="review", label_field="stars")
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 0, 1]
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps([{"review": "meh", "stars": "neg"}, {"review": "ok", "stars": 1}]))
    assert read_labelled(dev, text_field="review", label_field="stars", label_names=data.label_names).labels == [0, 1]
    dev.write_text(json.dumps([{"review": "meh", "stars": "neutral"}]))
    with pytest.raises(InputError, match="not among the training labels"):
        read_labelled(dev, text_field="review", label_field="stars", label_names=data.label_names)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"sentence": "a", "label": 1}\nnot json\n', "not valid JSON"),
        ('{"body": "a", "label": 1}\n', "no text field"),
        ('{"sentence": "a", "y": 1}\n', "no label field"),
        ('{"sentence": "a", "label": "pos"}\n{"sentence": "b", "label": "pos"}\n', "at least 2 labels"),
        ('{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 3000000}\n', "beyond 9999"),
        ('{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 10000}\n', "beyond 9999"),
        ("sentence,label\na,1\nb,\nc,0\n", "record 2 lacks"),
        ("sentence,label\n" + "x" * 200_000 + ",1\n", "not readable as CSV"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("data.csv" if content.startswith("sentence,") else "data.jsonl")
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_labelled(path)


def test_digit_like_characters_are_label_names_not_indices(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"sentence": "a", "label": "\u00b2"}\n{"sentence": "b", "label": "1"}\n')
    assert read_labelled(path).label_names == ["1", "\u00b2"]


def test_missing_file_is_not_mistaken_for_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_labelled(tmp_path / "nope.jsonl")


def test_a_mistyped_path_or_a_folder_is_not_mistaken_for_a_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("data/train.txt", "train.txt", "data/sub/train", "data\\train"):
        with pytest.raises(InputError, match=f"{re.escape(name)}: no such file"):
            read_labelled(name)
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="a folder, not a file"):
        read_labelled("data")
    with pytest.raises(InputError, match="a folder, not a file"):
        read_labelled(tmp_path / "data")


def test_tune_cli_on_too_few_records_says_the_dev_split_took_a_label(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "two.jsonl", [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    result = runner.invoke(app, ["tune", "--model", str(tmp_path / "none"), "--train", str(train), "--out", "x"])
    assert result.exit_code == EXIT_ERROR, result.output
    assert "too few to hold out a dev set" in result.output and "--dev" in result.output
    typo = str(tmp_path / "data" / "train.txt")
    missing = runner.invoke(app, ["tune", "--model", "m", "--train", typo, "--out", "x"])
    assert missing.exit_code == EXIT_ERROR and "no such file" in missing.output and "datasets" not in missing.output


def test_tune_cli(trained_bert_dir: Path, tmp_path: Path) -> None:
    rows = lambda data: [{"sentence": t, "label": y} for t, y in zip(data.texts, data.labels, strict=True)]  # noqa: E731
    train = _jsonl(tmp_path / "train.jsonl", rows(tiny_task(120, 1)))
    dev = _jsonl(tmp_path / "dev.jsonl", rows(tiny_task(40, 2)))
    out = tmp_path / "clf"
    args = ["tune", "--model", str(trained_bert_dir), "--train", str(train), "--dev", str(dev), "--out", str(out)]
    result = runner.invoke(app, [*args, "--method", "lora", "--epochs", "3", "--lr", "0.03", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "dev accuracy" in result.output
    assert TunedClassifier.from_pretrained(out).config.method == "lora"
    bad = runner.invoke(app, [*args, "--method", "adapterz", "--overwrite"])
    assert bad.exit_code == EXIT_ERROR and "unknown tuning method" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    # an interrupted run's checkpoint with other settings is refused until --fresh discards it
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "progress.json").write_text('{"identity": {"config": "another run"}}')
    again = [*args, "--method", "lora", "--epochs", "1", "--quiet", "--overwrite"]
    stale = runner.invoke(app, again)
    assert stale.exit_code == EXIT_ERROR and "--fresh" in stale.output
    assert runner.invoke(app, [*again, "--fresh"]).exit_code == 0 and not (out / "checkpoint").exists()


def test_tune_cli_checks_for_a_finished_classifier_while_holding_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check ran before the library took the folder: a run finishing in between was written over."""
    import lmshield.cli.tune
    from lmshield.locks import LOCK_FILE

    out, held = tmp_path / "clf", []

    def refuse(folder, *args, **kwargs):
        held.append((Path(folder) / LOCK_FILE).is_file())
        raise InputError("stop here")

    monkeypatch.setattr(lmshield.cli.tune, "refuse_to_replace", refuse)
    train = _jsonl(tmp_path / "two.jsonl", [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}])
    result = runner.invoke(app, ["tune", "--model", "m", "--train", str(train), "--out", str(out)])
    assert result.exit_code == EXIT_ERROR and "stop here" in result.output
    assert held == [True] and not out.exists()  # the folder the run made for nothing is gone again


def test_labels_must_index_the_label_names() -> None:
    assert LabelledData(["a", "b"], [0, 1], ["x", "y"]).labels == [0, 1]
    with pytest.raises(InputError, match=r"label 2 outside 0\.\.1"):
        LabelledData(["a", "b"], [0, 2], ["x", "y"])


def test_labelled_data_refuses_what_is_not_texts_and_class_indices() -> None:
    numpy = pytest.importorskip("numpy")
    data = LabelledData(("a", "b"), numpy.array([0, 1]), ["x", "y"])
    assert data.texts == ["a", "b"] and data.labels == [0, 1] and type(data.labels[0]) is int
    for texts, labels, names, message in (
        (["a", "b"], ["0", "1"], ["0", "1"], "labels must be whole-number class indices: label 0 is '0'"),
        (["a", "b"], [0, 1.0], ["0", "1"], "label 1 is 1.0"),
        (["a", "b"], [True, False], ["0", "1"], "label 0 is True"),
        (["a", "b"], "01", ["0", "1"], "list of labels, got one string"),
        (["a", "b"], 1, ["0", "1"], "list of labels, got int"),
        ("ab", [0, 1], ["0", "1"], "list of texts, got one string"),
        (["a", None], [0, 1], ["0", "1"], "item 1 is NoneType"),
        (["a", "b"], [0, 1], [0, 1], "label names must be strings"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            LabelledData(texts, labels, names)


def test_split_holds_out_a_seeded_disjoint_share() -> None:
    """What tune() trains and picks its epoch on when no dev set is given."""
    data = LabelledData([f"text {i}" for i in range(40)], [i % 3 for i in range(40)], ["a", "b", "c"])
    rest, held = data.split(0.25, seed=3)
    assert (len(rest), len(held)) == (30, 10)
    assert set(rest.texts).isdisjoint(held.texts) and set(rest.texts) | set(held.texts) == set(data.texts)
    for part in (rest, held):  # labels travel with their texts, in the original order, under the same names
        assert part.labels == [int(t.split()[1]) % 3 for t in part.texts] and part.label_names == data.label_names
        assert part.texts == sorted(part.texts, key=lambda t: int(t.split()[1]))
    assert data.split(0.25, seed=3) == (rest, held)
    assert data.split(0.25, seed=4)[1] != held  # another seed holds out other examples
    assert held.texts != data.texts[:10] and held.texts != data.texts[-10:]  # shuffled, not a slice
    assert [len(part) for part in data.split(0.001)] == [39, 1]  # at least one example is held out
    with pytest.raises(InputError, match="at least 2 examples"):
        data.take([0]).split(0.5)


def test_one_class_in_several_spellings_is_one_label(tmp_path: Path) -> None:
    labels = [1, 1.0, "1.0", "01", 0, "0"]  # 1 and 1.0 were two classes, "1" and "1.0"
    path = _jsonl(tmp_path / "mixed.jsonl", [{"sentence": f"t{i}", "label": y} for i, y in enumerate(labels)])
    data = read_labelled(path)
    assert data.label_names == ["0", "1"] and data.labels == [1, 1, 1, 1, 0, 0]
    dev = _jsonl(tmp_path / "dev.jsonl", [{"sentence": "d", "label": 1.0}])
    assert read_labelled(dev, label_names=data.label_names).labels == [1]


def test_a_classifier_saved_with_spelt_out_labels_reads_its_data_as_before(tmp_path: Path) -> None:
    names = ["1.0", "2.0"]  # what a file labelled 1.0 and 2.0 trained before such labels were whole numbers
    test = _jsonl(tmp_path / "test.jsonl", [{"sentence": "a", "label": 1.0}, {"sentence": "b", "label": "2.0"}])
    assert read_labelled(test, label_names=names).labels == [0, 1]  # 1.0 read as "1" was index 1: "2.0"
    half = _jsonl(tmp_path / "half.jsonl", [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 1.5}])
    assert read_labelled(half, label_names=["0.5", "1.5"]).labels == [0, 1]  # names it knows are no scores


@pytest.mark.parametrize(
    ("label", "message"),
    [(0.5, "label 0.5; labels name classes"), (float("nan"), "label nan"), ([1], "holds a list where a label")],
)
def test_a_label_that_names_no_class_is_refused(tmp_path: Path, label: object, message: str) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": label}])
    with pytest.raises(InputError, match=f"record 2 .*{re.escape(message)}"):  # they became classes "0.5", "nan", "[1]"
        read_labelled(path)
