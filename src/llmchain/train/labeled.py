"""Labelled text tables for classification: CSV, TSV or JSONL → (texts, labels), plus the label map.

`read_labeled(path, text_column, label_column)` reads one file. Columns are found by name (the
first row of a CSV/TSV is its header; JSONL records are objects); when not named, the text column is
the first of `text`, `sentence`, `review`, `content`, `document` present, and the label column the
first of `label`, `labels`, `class`, `category`, `target`. A row whose text or label is empty is
rejected (counted, with the reason), never silently dropped; `strict=True` makes it an error.
`LabelMap.from_labels` turns the training labels into `id2label`/`label2id`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain.errors import DataError, UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "question")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target")


@dataclass
class LabeledData:
    """Rows of one file: texts and their labels as strings, plus the rows that were rejected."""

    path: Path
    texts: list[str]
    labels: list[str]
    text_column: str
    label_column: str
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _label_str(value: Any) -> str:
    # Labels compare as strings: 1, "1" and 1.0 (pandas-written CSVs) are the same class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = str(value).lower()
    return str(value).strip()


def _iter_rows(path: Path) -> tuple[list[str], Any]:
    """(column names, iterator of (line number, dict)) for a CSV/TSV/JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):

        def jsonl():
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, {"__error__": f"invalid JSON ({e.msg})"}
                        continue
                    yield n, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}

        rows = list(jsonl())
        if suffix == ".json" and len(rows) == 1 and "__error__" in rows[0][1]:
            # A whole-file JSON array of records.
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON array of objects or JSON lines")
            rows = [(i + 1, r if isinstance(r, dict) else {"__error__": "not a JSON object"}) for i, r in enumerate(data)]
        columns: list[str] = []
        for _, r in rows:
            columns.extend(k for k in r if k not in columns and k != "__error__")
        return columns, iter(rows)
    if suffix not in (".csv", ".tsv", ".tab"):
        raise UserError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .jsonl)")
    delimiter = "\t" if suffix in (".tsv", ".tab") else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 — closed by the generator below
    # TSV files in the wild (SST, TREC) contain bare quotes inside sentences: read them literally.
    reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if header is None:
        f.close()
        return [], iter(())
    header = [h.strip() for h in header]

    def table():
        with f:
            for values in reader:
                n = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    yield n, {"__error__": f"{len(values)} fields, header has {len(header)}"}
                    continue
                yield n, dict(zip(header, values, strict=True))

    return header, table()


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(
                f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns) or 'none'}); "
                f"name it with --{what}-column"
            )
        return wanted
    lower = {c.lower(): c for c in columns}
    for name in defaults:
        if name in lower:
            return lower[name]
    raise UserError(
        f"{path}: cannot tell which column holds the {what} (columns: {', '.join(columns) or 'none'}); "
        f"name it with --{what}-column"
    )


def read_labeled(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    strict: bool = False,
) -> LabeledData:
    """All rows of a CSV/TSV/JSONL file as texts + string labels.

    Raises UserError for a missing/empty file or a missing column (the message lists the columns);
    DataError for the first malformed row under `strict`; otherwise malformed rows are returned in
    `.rejected` with line number and reason.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    columns, rows = _iter_rows(path)
    if not columns:
        raise UserError(f"{path}: the file has no rows")
    tcol = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    lcol = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    if tcol == lcol:
        raise UserError(f"{path}: the text and label columns are both {tcol!r}")
    texts: list[str] = []
    labels: list[str] = []
    rejected: list[dict[str, Any]] = []
    for n, row in rows:
        reason = row.get("__error__")
        if reason is None:
            text, label = row.get(tcol), row.get(lcol)
            if not isinstance(text, str) or not text.strip():
                reason = f"empty or missing text in column {tcol!r}"
            elif label is None or _label_str(label) == "" or isinstance(label, (list, dict)):
                reason = f"empty, missing or non-scalar label in column {lcol!r}"
        if reason is not None:
            if strict:
                raise DataError(f"{path}:{n}: {reason} (drop --strict to skip such rows)")
            rejected.append({"file": str(path), "line": n, "reason": reason})
            continue
        texts.append(text)
        labels.append(_label_str(label))
    if not texts:
        raise UserError(f"{path}: no usable rows (of {len(rejected)} rows, all were rejected: {rejected[0]['reason']})"
                        if rejected else f"{path}: the file has no rows")
    return LabeledData(path, texts, labels, tcol, lcol, rejected)


def read_texts(path: str | Path, text_column: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(texts, rows) of a file to classify: .txt is one text per line; CSV/TSV/JSONL use the text column.

    `rows` are the records as read (for writing them back beside their predictions). Empty texts are
    kept as "" so that outputs stay aligned with inputs. Raises UserError for a missing file or column.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return lines, [{"text": t} for t in lines]
    columns, rows_iter = _iter_rows(path)
    if not columns:
        raise UserError(f"{path}: the file has no rows")
    col = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    texts, rows = [], []
    for n, row in rows_iter:
        if "__error__" in row:
            raise UserError(f"{path}:{n}: {row['__error__']}")
        value = row.get(col)
        texts.append(value if isinstance(value, str) else "" if value is None else str(value))
        rows.append(row)
    return texts, rows


def _natural_key(label: str) -> tuple:
    # Integer labels sort numerically (2 before 10) and keep their own value as the id when they are 0..K-1.
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


@dataclass
class LabelMap:
    """Class names in id order: `id2label[i]` is the name of class i."""

    names: list[str]

    @classmethod
    def from_labels(cls, labels: list[str]) -> LabelMap:
        names = sorted(set(labels), key=_natural_key)
        if len(names) < 2:
            raise UserError(f"classification needs at least 2 classes; the training data has only {names}")
        return cls(names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def encode(self, labels: list[str], where: str) -> list[int]:
        """Ids of `labels`; a label the map does not know is a UserError naming `where` and the labels."""
        table = self.label2id
        unknown = sorted(set(labels) - table.keys(), key=_natural_key)
        if unknown:
            raise UserError(
                f"{where}: labels {unknown[:5]} do not occur in the training data "
                f"(training labels: {self.names[:10]}); the label sets of train and val must match"
            )
        return [table[x] for x in labels]

    def class_weights(self, ids: list[int]) -> list[float]:
        """'Balanced' weights n / (k · count_c) (scikit-learn's formula), for unbalanced training data."""
        counts = Counter(ids)
        n, k = len(ids), len(self.names)
        return [n / (k * counts[i]) if counts[i] else 0.0 for i in range(k)]
