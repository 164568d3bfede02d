"""Where text comes from: generated (data-free), a text file, a JSON Lines file or a dataset id."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmshield.errors import InputError, require_file
from lmshield.text.grammar import grammar_sentences, vocabulary_sentences

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "sentence", "content", "review")  # tried in this order when no field is named
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
GENERATORS = ("grammar", "vocab")


@dataclass(frozen=True)
class TextSource:
    """A description of carrier text, small enough to store in a report.

    ``kind`` is ``generated`` (``generator`` grammar or vocab), ``file`` (plain text or JSON Lines) or
    ``dataset`` (a Hugging Face dataset id, with ``split`` and ``column``).
    """

    kind: str = "generated"
    generator: str = "grammar"
    path: str | None = None
    field: str | None = None
    dataset: str | None = None
    split: str = "train"
    column: str | None = None

    @classmethod
    def from_options(
        cls,
        texts: str | Path | None = None,
        dataset: str | None = None,
        *,
        generator: str | None = None,
        field: str | None = None,
        split: str | None = None,
        column: str | None = None,
    ) -> TextSource:
        """The source the options name; an option that does not go with it is refused, not ignored."""
        if texts is not None and dataset is not None:
            raise InputError("give either a text file or a dataset id, not both")
        kind = "file" if texts is not None else "dataset" if dataset is not None else "generated"
        given = {"generator": generator, "field": field, "split": split, "column": column}
        fits = {"file": ("field",), "dataset": ("split", "column"), "generated": ("generator",)}[kind]
        stray = [name for name, value in given.items() if value is not None and name not in fits]
        if stray:
            where = {"file": "a text file", "dataset": "a dataset", "generated": "data-free carriers"}[kind]
            raise InputError(f"--{stray[0]} does not go with {where}")
        if texts is not None:
            return cls(kind="file", path=str(texts), field=field)
        if dataset is not None:
            return cls(kind="dataset", dataset=dataset, split=split or "train", column=column)
        generator = generator or "grammar"
        if generator not in GENERATORS:
            raise InputError(f"unknown text generator {generator!r}: use {' or '.join(GENERATORS)}")
        return cls(kind="generated", generator=generator)

    def describe(self) -> str:
        if self.kind == "file":
            return f"file {self.path}"
        if self.kind == "dataset":
            return f"dataset {self.dataset}[{self.split}]"
        return f"data-free ({self.generator})"

    def load(self, count: int, seed: int = 0, tokenizer: object | None = None) -> list[str]:
        """Up to ``count`` non-empty texts (all of them when the source is smaller)."""
        if self.kind == "generated":
            if self.generator == "vocab":
                if tokenizer is None:
                    raise InputError("the vocab generator needs the model's tokenizer")
                return vocabulary_sentences(tokenizer, count, seed)
            return grammar_sentences(count, seed)
        texts = read_texts(self.path, self.field) if self.kind == "file" else _dataset_texts(self)
        return texts[:count]


def read_texts(path: str | Path, field: str | None = None) -> list[str]:
    """Read a plain-text file (one text a line) or records (JSON Lines, a JSON array, CSV/TSV) by ``field``."""
    file = require_file(path)
    if file.suffix.lower() in RECORD_SUFFIXES or field is not None:
        return _texts_from_records(file, field)
    every = [line.strip() for line in text_lines(read_utf8(file))]
    lines = [line for line in every if line]
    if not lines:
        raise InputError(f"{path}: empty, no texts to read")
    if _is_json_object(lines[0]):  # JSON Lines without the suffix (a text may well open with "[" or "{")
        return _texts_from_records(file, field)
    _say_blank_lines(every, file)
    return lines


def _say_blank_lines(lines: list[str], file: Path) -> None:
    """Warn that the blank lines among the texts are left out (the outputs then number fewer lines than the file)."""
    while lines and not lines[-1]:  # the blank lines a file ends with are no texts to miss
        lines = lines[:-1]
    blank = lines.count("")
    if blank:
        logger.warning("%s: %d blank line(s) among the %d texts are left out", file, blank, len(lines) - blank)


def read_utf8(file: Path) -> str:
    """The text of ``file`` (UTF-8, a byte-order mark dropped); :class:`InputError` names the line of a byte that
    is not UTF-8 (a Latin-1 or Windows-1252 file, say)."""
    try:  # the whole file at once: a text-mode read decodes in chunks, whose offsets name no line
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{file}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")  # the line ends a text-mode read gives


def text_lines(content: str) -> list[str]:
    """``content`` split at line feeds only (reading has turned CRLF and CR into them): ``str.splitlines`` also
    splits at U+2028, NEL, form feeds and other separators a text or a JSON string may hold."""
    return content.split("\n")


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def find_text_field(columns: list[str], given: str | None, where: str | Path) -> str:
    """The text field of records with these ``columns``: ``given``, else the first of :data:`TEXT_FIELDS`."""
    key = given or next((name for name in TEXT_FIELDS if name in columns), None)
    if key is None or key not in columns:
        tried = given or ", ".join(TEXT_FIELDS)
        raise InputError(f"{where}: no text field ({tried}); fields: {', '.join(map(str, columns))}")
    return key


def read_records(path: str | Path) -> list[dict]:
    """Read records from JSON Lines, a JSON array of objects, or CSV/TSV, with a clear error on bad input."""
    file = require_file(path)
    content = read_utf8(file)
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = _table_records(content, path, "\t" if suffix == ".tsv" else ",")
    elif content.lstrip().startswith("["):
        records = _json_array(content, path)
    else:
        lines = enumerate(text_lines(content), start=1)
        records = [_json_line(line, path, number) for number, line in lines if line.strip()]
    if not records:
        raise InputError(f"{path}: empty, no records to read")
    return records


def _table_records(content: str, path: str | Path, delimiter: str) -> list[dict]:
    """The rows of a CSV (or TSV) file as records; a quoted text keeps its line breaks. A row with more fields
    than the header names (an unquoted comma in a text) is refused, as is a quote that is never closed."""
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    records: list[dict] = []
    try:
        start = last_start = reader.line_num + 1 if reader.fieldnames is not None else 1
        for row in reader:
            _refuse_extra_fields(row, reader, path, delimiter)
            records.append({key: value for key, value in row.items() if key is not None})
            last_start, start = start, reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}: not readable as {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from exc
    if (
        records
        and any("\n" in str(value) for value in records[-1].values())
        and _open_quote(content, last_start, delimiter)
    ):
        raise InputError(
            f"{path}:{last_start}: a quote opened here is never closed; the rest of the file reads as one field"
        )
    return records


def _refuse_extra_fields(row: dict, reader: csv.DictReader, path: str | Path, delimiter: str) -> None:
    """Refuse a row with fields the header has no name for (DictReader's rest key ``None``) that hold something:
    empty ones, a comma that ends every row as some exports write, lose nothing."""
    if any(str(value).strip() for value in row.get(None) or ()):
        width = len(reader.fieldnames or ())
        raise InputError(
            f"{path}:{reader.line_num}: {width + len(row[None])} fields where the header names {width}; "
            f"quote a text that holds a {'tab' if delimiter == chr(9) else 'comma'}"
        )


def _open_quote(content: str, line: int, delimiter: str) -> bool:
    """Whether the record that starts at ``line`` (1-based) runs to the end of ``content`` inside a quote."""
    tail = "\n".join(text_lines(content)[line - 1 :])
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _json_array(content: str, path: str | Path) -> list[dict]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not all(isinstance(item, dict) for item in data):
        raise InputError(f"{path}: expected a JSON array of objects")
    return data


def _json_line(line: str, path: str | Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{number}: not valid JSON ({exc.msg}); use JSON Lines, a JSON array or CSV") from exc
    if not isinstance(record, dict):
        raise InputError(f"{path}:{number}: expected a JSON object")
    return record


def _texts_from_records(file: Path, field: str | None) -> list[str]:
    records = read_records(file)
    key = find_text_field(list(records[0]), field, file)
    texts = [text_value(record.get(key), file, number).strip() for number, record in enumerate(records, start=1)]
    kept = [text for text in texts if text]
    if not kept:
        raise InputError(f"{file}: field {key!r} is empty in every record")
    if len(kept) < len(texts):  # the outputs then number fewer lines than the records: say so
        logger.warning("%s: %d of %d records have an empty %r and are left out", file, len(texts) - len(kept),
                       len(texts), key)  # fmt: skip
    return kept


def text_value(value: Any, where: str | Path, number: int) -> str:
    """A record's text as a string: numbers are written out, a missing value is empty, objects are refused."""
    if isinstance(value, dict | list):
        raise InputError(f"{where}: record {number} holds a {type(value).__name__} where a text should be")
    return "" if value is None else str(value)


MIN_DATASETS = (2, 20)


def _version(text: str) -> tuple[int, ...]:
    """The leading whole numbers of a version string ("2.19.1" -> (2, 19, 1), "3.0.0.dev0" -> (3, 0, 0))."""
    numbers = []
    for part in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def load_dataset_split(name: str, split: str) -> Any:
    """A Hugging Face dataset split, with one-line errors when ``datasets`` is missing or the id fails."""
    try:
        import datasets
    except ImportError as exc:
        raise InputError(f"{name}: dataset ids need the datasets package: pip install 'lmshield[datasets]'") from exc
    if _version(datasets.__version__) < MIN_DATASETS:  # older ones run a dataset's loading script unasked
        raise InputError(f"datasets {datasets.__version__} runs dataset scripts; lmshield needs datasets>=2.20")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # the datasets library raises many exception types
        raise InputError(f"dataset {name}[{split}] cannot be loaded ({type(exc).__name__}: {exc})") from exc


def _dataset_texts(source: TextSource) -> list[str]:
    data = load_dataset_split(str(source.dataset), source.split)
    column = find_text_field(list(data.column_names), source.column, f"dataset {source.dataset}")
    return [str(t) for t in data[column] if str(t).strip()]
