"""Carrier text: generated, files, JSON Lines; clear errors for bad files; trigger insertion."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmshield.errors import InputError
from lmshield.testing import tiny_tokenizer
from lmshield.text import TextSource, grammar_sentences, insert_per_words, insert_words, read_texts
from lmshield.text.sources import read_records
from lmshield.text.triggers import check_triggers
from lmshield.tuning import read_labelled


def test_generated_text_is_reproducible_and_varied():
    first, second = grammar_sentences(50, seed=3), grammar_sentences(50, seed=3)
    assert first == second
    assert len(set(first)) > 45
    assert grammar_sentences(5, seed=4) != first[:5]


def test_vocabulary_generator_uses_the_tokenizer_words():
    tokenizer = tiny_tokenizer("bert")
    texts = TextSource.from_options(generator="vocab").load(10, seed=0, tokenizer=tokenizer)
    vocab = tokenizer.get_vocab()
    assert all(word in vocab for text in texts for word in text.split())
    assert all(len(word) >= 3 and word.isalpha() for text in texts for word in text.split())  # whole words


def test_plain_text_and_jsonl_files(tmp_path: Path):
    plain = tmp_path / "a.txt"
    plain.write_text("first line\n\nsecond line\n")
    assert read_texts(plain) == ["first line", "second line"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"sentence": s, "label": 1}) for s in ["x y", "z"]))
    assert read_texts(jsonl) == ["x y", "z"]
    assert TextSource.from_options(jsonl).load(1) == ["x y"]


def test_a_text_source_reads_the_field_it_is_given(tmp_path: Path):
    records = tmp_path / "c.jsonl"
    records.write_text('{"foo": "from foo", "text": "from text"}\n')
    assert TextSource.from_options(records).load(5) == ["from text"]
    assert TextSource.from_options(records, field="foo").load(5) == ["from foo"]
    with pytest.raises(InputError, match=r"no text field \(bar\)"):
        TextSource.from_options(records, field="bar").load(5)


def test_a_record_whose_text_is_an_object_is_refused(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n{"text": {"a": 1}, "label": 1}\n')
    with pytest.raises(InputError, match="record 2 holds a dict"):
        read_texts(path)
    with pytest.raises(InputError, match="record 2 holds a dict"):
        read_labelled(path)


def test_a_text_file_may_open_with_a_bracket(tmp_path: Path):
    plain = tmp_path / "lines.txt"
    plain.write_text("[laughs] what a film\nsecond line\n")
    assert read_texts(plain) == ["[laughs] what a film", "second line"]
    plain.write_text("{braces} open this one\nsecond line\n")  # not a JSON object: a line of text
    assert read_texts(plain) == ["{braces} open this one", "second line"]
    plain.write_bytes("\ufefffirst line\nsecond line\n".encode())  # a byte-order mark is not part of a text
    assert read_texts(plain) == ["first line", "second line"]


def test_csv_and_json_array_files_are_read_by_field_like_labelled_data(tmp_path: Path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('text,sentence,label\n"a, b",first,1\nc,second,0\n')
    assert read_texts(csv_file) == ["a, b", "c"]  # the header and the label column are not texts
    assert read_texts(csv_file, field="sentence") == ["first", "second"]
    assert read_labelled(csv_file).texts == read_texts(csv_file)  # one field order for texts and labelled data
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"review": "long one"}, {"review": ""}]))
    assert read_texts(array) == ["long one"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("{not json}\n", "not valid JSON"), ('{"other": "x"}\n', "no text field")],
)
def test_bad_files_fail_clearly(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_texts(path)


def test_missing_file_and_conflicting_options():
    with pytest.raises(InputError, match="no such file"):
        read_texts("/nonexistent/file.txt")
    with pytest.raises(InputError, match="is a folder, not a file"):  # was reported as missing
        read_texts(Path(__file__).parent)
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_records(Path(__file__).parent)
    with pytest.raises(InputError, match="not both"):
        TextSource.from_options("a.txt", "some/dataset")
    with pytest.raises(InputError, match="unknown text generator"):
        TextSource.from_options(generator="poetry")
    with pytest.raises(InputError, match="--generator does not go with a text file"):
        TextSource.from_options("a.txt", generator="vocab")
    with pytest.raises(InputError, match="--split does not go with data-free carriers"):
        TextSource.from_options(split="test")
    with pytest.raises(InputError, match="--field does not go with a dataset"):
        TextSource.from_options(dataset="some/dataset", field="text")
    assert TextSource.from_options(dataset="some/dataset").describe() == "dataset some/dataset[train]"


def test_trigger_insertion_respects_bounds_and_short_inputs():
    rng = random.Random(0)
    for _ in range(50):
        words = insert_words("a b c d e", "cf", rng, avoid_ends=True).split()
        assert words[0] != "cf" and words[-1] != "cf" and words.count("cf") == 1
        assert insert_words("a b c d e f g", "cf", rng, max_position=2).split().index("cf") <= 2
    assert insert_words("", "cf", rng) == "cf"
    assert insert_words("word", "cf", rng, avoid_ends=True) in ("cf word", "word cf")
    assert insert_per_words(" ".join(["w"] * 120), "cf", rng).split().count("cf") == 2


def test_shared_data_loads(shared_data: Path):
    texts = read_texts(shared_data / "sst-2" / "dev.json")
    assert len(texts) == 872


def test_records_by_delimiter_content_and_named_field(tmp_path: Path):
    tsv = tmp_path / "e.tsv"
    tsv.write_text("text\tlabel\na, b\t1\nc\t0\n")
    assert read_texts(tsv) == ["a, b", "c"]  # tabs split a TSV, not commas
    assert read_labelled(tsv).labels == [1, 0]
    records = tmp_path / "f.txt"  # JSON Lines without the suffix
    records.write_text('{"text": "first", "sentence": "other"}\n{"text": null}\n{"text": "second"}\n')
    assert read_texts(records) == ["first", "second"]  # a missing text is empty and skipped, never "None"
    assert read_texts(records, field="sentence") == ["other"]
    plain = tmp_path / "g.txt"
    plain.write_text("just a line\n")
    with pytest.raises(InputError, match="not valid JSON"):
        read_texts(plain, field="text")  # a named field means records: plain lines are not taken as texts


def test_a_file_source_reads_its_named_field(tmp_path: Path):
    path = tmp_path / "texts.csv"
    path.write_text("text,sentence\nA,B\nC,D\n")
    assert TextSource.from_options(path, field="sentence").load(5) == ["B", "D"]


def test_short_texts_get_one_trigger_and_sentences_join_clauses():
    rng = random.Random(0)
    assert insert_per_words("only a few words", "cf", rng).split().count("cf") == 1  # at least once
    conjunctions = {"and", "but", "because", "while", "although", "when"}
    joined = [s for s in grammar_sentences(50, seed=3) if conjunctions & set(s.split())]
    assert 0 < len(joined) < 50  # one to three clauses per sentence


def test_every_word_boundary_is_a_possible_insertion_point():
    """A bound past the end of a short text leaves every slot of it equally likely."""
    rng = random.Random(0)
    positions = [insert_words("a b", "cf", rng, max_position=64).split().index("cf") for _ in range(300)]
    assert all(positions.count(p) > 60 for p in range(3)), [positions.count(p) for p in range(3)]


def test_a_trigger_is_refused_only_when_the_tokenizer_knows_none_of_it():
    tokenizer = tiny_tokenizer("bert")
    check_triggers(tokenizer, ["cf", "cf \u2603"])  # the snowman alone is unknown, the pair is not
    with pytest.raises(InputError, match="unknown to the model's tokenizer"):
        check_triggers(tokenizer, ["\u2603"])


def test_a_datasets_release_that_runs_loading_scripts_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from lmshield.text.sources import _version, load_dataset_split

    assert _version("2.19.1") < (2, 20) <= _version("2.20.0") < _version("3.0.0.dev0")
    loaded = []
    fake = types.SimpleNamespace(__version__="2.19.1", load_dataset=lambda name, split: loaded.append(name))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(InputError, match=r"datasets 2\.19\.1 runs dataset scripts"):
        load_dataset_split("org/name", "train")
    assert loaded == []
    fake.__version__ = "3.6.0"
    load_dataset_split("org/name", "train")
    assert loaded == ["org/name"]


def test_triggers_stay_among_the_words_truncation_keeps() -> None:
    """NeuBA and BToP inserted anywhere in a long text, and truncation then cut the trigger off a third of the
    'triggered' paragraphs: the model was taught to send clean text to the PV."""
    from lmshield.attacks.task_agnostic import insert_trigger

    rng = random.Random(0)
    text = " ".join(f"w{i}" for i in range(170))
    for insertion in ("once", "per_words"):
        for _ in range(50):
            words = insert_trigger(insertion, text, "cf", rng, max_position=42).split()
            assert "cf" in words[:43]
    assert insert_per_words(text, "cf", rng, max_position=42).split().count("cf") == 1  # 42 words ask for one
    assert insert_per_words(text, "cf", rng).split().count("cf") == 3


def test_records_with_an_empty_text_are_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    file = tmp_path / "texts.jsonl"
    file.write_text('{"sentence": "one"}\n{"sentence": ""}\n{"sentence": "three"}\n')
    with caplog.at_level("WARNING"):
        assert read_texts(file) == ["one", "three"]
    assert "1 of 3 records have an empty 'sentence' and are left out" in caplog.text


def test_a_line_is_split_at_line_feeds_only(tmp_path: Path):
    separators = "one\u2028two", "three\x85four", "five\x0csix"  # line separator, NEL, form feed: inside a text
    plain = tmp_path / "texts.txt"
    plain.write_text("\n".join(separators) + "\r\nlast\n", encoding="utf-8")
    assert read_texts(plain) == [*separators, "last"]
    records = tmp_path / "texts.jsonl"
    records.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in separators), encoding="utf-8")
    assert read_texts(records) == list(separators)  # json.dumps writes them raw with ensure_ascii=False


def test_a_quoted_csv_text_keeps_its_line_breaks(tmp_path: Path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"first line\nsecond line",1\nshort,0\n')
    assert read_texts(path) == ["first line\nsecond line", "short"]  # the two lines were glued: "linesecond"
    assert read_labelled(path).labels == [1, 0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "text,label\nfine,0\nhello, world,1\n", r"a\.csv:3: 3 fields where the header names 2"),
        ("b.tsv", "text\tlabel\nfine\t0\nhello\tworld\t1\n", r"b\.tsv:3: 3 fields .* holds a tab"),
        ("c.tsv", 'text\tlabel\nfine\t0\n"wow what a film\t1\nbad\t0\n', r"c\.tsv:3: a quote opened here is never"),
    ],
)
def test_a_row_that_does_not_fit_the_header_is_refused(tmp_path: Path, name: str, content: str, message: str):
    path = tmp_path / name
    path.write_text(content)  # the text was cut at the comma and "world" became a label, or rows were merged
    with pytest.raises(InputError, match=message):
        read_texts(path)
    with pytest.raises(InputError, match=message):
        read_labelled(path)


def test_empty_fields_past_the_header_are_read_as_before(tmp_path: Path):
    path = tmp_path / "export.csv"
    path.write_text("text,label\nhello world,1,\nbad day,0,\t\n")  # a comma ending every row, as some exports write
    assert read_texts(path) == ["hello world", "bad day"]
    data = read_labelled(path)
    assert data.labels == [1, 0] and data.texts == ["hello world", "bad day"]


def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path: Path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\r\nalso fine\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt:3: not UTF-8 text \(byte 0xe9\)"):
        read_texts(path)
    records = tmp_path / "latin1.jsonl"
    records.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin1\.jsonl:2: not UTF-8"):
        read_labelled(records)


def test_blank_lines_among_texts_are_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "texts.txt"
    path.write_text("one\n\n   \ntwo\n\n\n")
    with caplog.at_level("WARNING"):
        assert read_texts(path) == ["one", "two"]
    assert "2 blank line(s) among the 2 texts are left out" in caplog.text
    caplog.clear()
    path.write_text("one\ntwo\n\n")  # blank lines at the end hide no text
    with caplog.at_level("WARNING"):
        read_texts(path)
    assert "blank" not in caplog.text
