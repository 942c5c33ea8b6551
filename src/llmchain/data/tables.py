"""Labelled and tabular text files — the one reader for every command that reads them (`finetune classify`,
`eval classify`, `eval generate`, `predict`, the baselines).

Formats: JSONL (one object a line), a JSON array of objects, CSV (RFC 4180 quoting) and TSV (tab, no
quoting: the GLUE/SST convention, where bare quotes occur inside sentences). A UTF-8 BOM is stripped.
Columns are found by name: the first row of a CSV/TSV is its header — unless it looks like data (see
`sniff_header`) or `header=False` says so, when the columns are named by index, "0", "1", ...; a column
may always be given by its index. Unnamed, the text column is the first of TEXT_COLUMNS present and the
label column the first of LABEL_COLUMNS. Labels are strings, read one way everywhere: 1, "1", 1.0 and
"1.0" are class "1"; true/True/TRUE are "true". A malformed row is rejected with file, line and reason
(counted, never silently dropped); `strict=True` makes the first one an error.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain.errors import DataError, UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "question", "input")
LABEL_COLUMNS = ("label", "labels", "class", "category", "coarse_label", "target", "sentiment")
_ERROR = "__error__"


@dataclass
class LabelledData:
    """Rows of one file: texts and their labels as strings, plus the rows that were rejected."""

    path: Path
    texts: list[str]
    labels: list[str]
    text_column: str
    label_column: str
    rejected: list[dict[str, Any]] = field(default_factory=list)
    groups: list[str] | None = None  # a group column's values (e.g. COLD's topic), when one was asked for

    def __len__(self) -> int:
        return len(self.texts)


def label_str(value: Any) -> str:
    """A label as the class name it stands for: 1, "1", 1.0, "1.0" → "1"; True, "TRUE" → "true"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+\.0+", text):  # a float-formatted integer (pandas writes 1.0)
        return str(int(float(text)))
    return text.lower() if text.lower() in ("true", "false") else text


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} file not found" if not p.exists() else f"{p}: is a directory, expected a {what} file")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: the file is empty")
    return p


def sniff_header(first: list[str]) -> bool:
    """Whether a table's first row is a header: not when one of its cells is a number or a boolean, or
    reads like a sentence (more than four words, over 40 characters, or Chinese/Japanese sentence
    punctuation: CJK text has no spaces to count words by) — column names are short words."""
    if not first:
        return True
    if any(re.fullmatch(r"[+-]?\d+(\.\d+)?|true|false", c.strip(), re.IGNORECASE) for c in first):
        return False
    return not any(len(c) > 40 or len(c.split()) > 4 or re.search(r"[，。！？；、…]", c) for c in first)


def _json_rows(p: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(data, list):
            raise UserError(f"{p}: expected a JSON array of objects")
        for i, r in enumerate(data, 1):
            yield i, r if isinstance(r, dict) else {_ERROR: f"expected a JSON object, got {type(r).__name__}"}
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield i, {_ERROR: f"invalid JSON ({getattr(e, 'msg', e)})"}
            continue
        yield i, obj if isinstance(obj, dict) else {_ERROR: f"expected a JSON object, got {type(obj).__name__}"}


def read_table(path: str | Path, what: str = "data", *, header: bool | None = None
               ) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:  # fmt: skip
    """(column names, [(line number, row dict)]) of a JSONL / JSON / CSV / TSV file. A malformed row is a
    dict with the single key "__error__" holding the reason. `header` None sniffs a CSV/TSV's first row.
    UserError for a missing, empty, non-UTF-8 or unknown-format file."""
    p = _check_file(path, what)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = list(_json_rows(p, text))
        columns: list[str] = []
        for _, r in rows:
            columns.extend(k for k in r if k not in columns and k != _ERROR)
        return columns, rows
    if suffix not in (".csv", ".tsv", ".tab"):
        raise UserError(f"{p}: unknown format {suffix!r}; use .jsonl, .json, .tsv or .csv")
    tsv = suffix != ".csv"
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # huge lines are data too
    reader = csv.reader(text.splitlines(), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)  # fmt: skip
    table = [(reader.line_num, cells) for cells in reader if cells and any(c.strip() for c in cells)]
    if not table:
        raise UserError(f"{p}: the file has no rows")
    first = table[0][1]
    if header is None:
        header = sniff_header(first)
    if header:
        columns, body = [c.strip() for c in first], table[1:]
    else:
        columns, body = [str(i) for i in range(len(first))], table
    rows = []
    for n, cells in body:
        if len(cells) != len(columns):
            rows.append((n, {_ERROR: f"{len(cells)} fields, the {'header' if header else 'first row'} has {len(columns)}"}))
        else:
            rows.append((n, dict(zip(columns, cells, strict=True))))
    return columns, rows


def pick_column(path: Path, columns: Sequence[str], given: str | int | None, candidates: Sequence[str],
                flag: str) -> str:  # fmt: skip
    """The column to use: `given` (a name, or an index into the columns), else the first of `candidates`
    present (case-insensitive). UserError listing the columns and naming the flag that fixes it."""
    shown = ", ".join(columns) or "none"
    what = flag.strip("-").split("-")[0]  # --label-column → label
    if given is not None:
        if str(given) in columns:
            return str(given)
        if str(given).lstrip("-").isdigit():
            i = int(given)
            if 0 <= i < len(columns):
                return columns[i]
            raise UserError(f"{path}: column index {i} is out of range (the file has {len(columns)} columns: "
                            f"{shown}); fix {flag}")  # fmt: skip
        raise UserError(f"{path}: no {what} column {given!r} (columns: {shown}); fix {flag}")
    lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise UserError(f"{path}: cannot tell which column holds the {what} (columns: {shown}); name it with {flag}")


def read_labelled(path: str | Path, text_column: str | int | None = None, label_column: str | int | None = None, *,
                  strict: bool = False, header: bool | None = None, group_column: str | int | None = None
                  ) -> LabelledData:  # fmt: skip
    """All rows of a labelled CSV/TSV/JSON(L) file as texts + string labels (`label_str`).

    UserError for a missing/empty file, a missing column (the message lists the columns) or a file with no
    usable row; DataError for the first malformed row under `strict`; otherwise malformed rows are in
    `.rejected` with line number and reason.
    """
    p = Path(path)
    columns, rows = read_table(p, "labelled", header=header)
    if not columns:
        raise UserError(f"{p}: the file has no rows")
    tcol = pick_column(p, columns, text_column, TEXT_COLUMNS, "--text-column")
    lcol = pick_column(p, columns, label_column, LABEL_COLUMNS, "--label-column")
    if tcol == lcol:
        raise UserError(f"{p}: the text and label columns are both {tcol!r}")
    gcol = pick_column(p, columns, group_column, (), "--group-column") if group_column is not None else None
    groups: list[str] = []
    texts: list[str] = []
    labels: list[str] = []
    rejected: list[dict[str, Any]] = []
    for n, row in rows:
        reason = row.get(_ERROR)
        if reason is None:
            text, label = row.get(tcol), row.get(lcol)
            if not isinstance(text, str) or not text.strip():
                reason = f"empty or missing text in column {tcol!r}"
            elif label is None or isinstance(label, (list, dict)) or label_str(label) == "":
                reason = f"empty, missing or non-scalar label in column {lcol!r}"
        if reason is not None:
            if strict:
                raise DataError(f"{p}:{n}: {reason}")
            rejected.append({"file": str(p), "line": n, "reason": reason})
            continue
        texts.append(text)
        labels.append(label_str(label))
        if gcol is not None:
            groups.append(str(row.get(gcol) if row.get(gcol) is not None else ""))
    if not texts:
        raise UserError(f"{p}: no usable rows (of {len(rejected)} rows, all were rejected: {rejected[0]['reason']})"
                        if rejected else f"{p}: the file has no rows")
    return LabelledData(p, texts, labels, tcol, lcol, rejected, groups if gcol is not None else None)


def read_records(path: str | Path, what: str = "data", *, header: bool | None = None
                 ) -> tuple[list[dict[str, Any]], list[int]]:  # fmt: skip
    """The rows of a JSONL / JSON-array / TSV / CSV file as dicts, with their 1-based line numbers.
    DataError naming file:line for the first malformed row (every row matters here: prompts, references)."""
    _, rows = read_table(path, what, header=header)
    for n, row in rows:
        if _ERROR in row:
            raise DataError(f"{path}:{n}: {row[_ERROR]}")
    return [r for _, r in rows], [n for n, _ in rows]


def read_texts(path: str | Path, text_column: str | int | None = None, *, header: bool | None = None
               ) -> tuple[list[str], list[dict[str, Any]]]:  # fmt: skip
    """(texts, rows) of a file to classify: .txt is one text per line; CSV/TSV/JSONL use the text column.

    `rows` are the records as read (for writing them back beside their predictions). Empty texts are
    kept as "" so that outputs stay aligned with inputs. UserError for a missing file, a missing column
    or a malformed row (an output row per input row, or none).
    """
    p = _check_file(path, "input")
    if p.suffix.lower() == ".txt":
        lines = p.read_text(encoding="utf-8-sig").splitlines()
        return lines, [{"text": t} for t in lines]
    columns, rows = read_table(p, "input", header=header)
    col = pick_column(p, columns, text_column, TEXT_COLUMNS, "--text-column")
    texts, out = [], []
    for n, row in rows:
        if _ERROR in row:
            raise UserError(f"{p}:{n}: {row[_ERROR]}")
        value = row.get(col)
        texts.append(value if isinstance(value, str) else "" if value is None else str(value))
        out.append(row)
    return texts, out


def _natural_key(label: str) -> tuple:
    # Integer labels sort numerically (2 before 10) and keep their own value as the id when they are 0..K-1.
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


@dataclass
class LabelMap:
    """Class names in id order: `id2label[i]` is the name of class i."""

    names: list[str]

    @classmethod
    def from_labels(cls, labels: list[str], where: str = "the training data") -> LabelMap:
        """The classes of `labels`; UserError naming `where` when there are fewer than 2."""
        names = sorted(set(labels), key=_natural_key)
        if len(names) < 2:
            raise UserError(f"{where}: only one class ({', '.join(names) or 'none'}) in the labels; "
                            "classification needs at least 2")
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


SPLIT_PARTS = ("train", "val", "test")


def split_labelled(path: str | Path, out_dir: str | Path, *, test_fraction: float = 0.2, val_fraction: float = 0.1,
                   seed: int = 0, text_column: str | int | Sequence[str | int] | None = None,
                   label_column: str | int | None = None, group_column: str | int | None = None,
                   header: bool | None = None, test_file: str | Path | None = None) -> dict[str, int]:  # fmt: skip
    """Cut a labelled table into OUT/train.jsonl, val.jsonl and test.jsonl ({"text", "label"[, "group"]}).

    Stratified by label and deterministic: the same file and seed give the same split on any machine
    (rows are shuffled within each class by `random.Random(seed)`, in file order). A list of text
    columns is joined with ". " (AG News: title, description). With `test_file` (read with the same
    columns) the test part is that file and only val is cut from `path`. Returns the rows per part.
    UserError for the reader's errors and for a table with fewer than 2 classes.
    """
    import random

    from llmchain.artifacts import atomic_write_text

    p = Path(path)
    columns, rows = read_table(p, "labelled", header=header)
    text_cols = list(text_column) if isinstance(text_column, (list, tuple)) else [text_column]
    tcols = [pick_column(p, columns, c, TEXT_COLUMNS, "--text-column") for c in text_cols]
    lcol = pick_column(p, columns, label_column, LABEL_COLUMNS, "--label-column")
    gcol = pick_column(p, columns, group_column, (), "--group-column") if group_column is not None else None

    def records(src: Path, table: list[tuple[int, dict[str, Any]]]) -> list[dict[str, str]]:
        out = []
        for n, row in table:
            if _ERROR in row:
                raise DataError(f"{src}:{n}: {row[_ERROR]}")
            text = ". ".join(row[c].strip() for c in tcols if isinstance(row.get(c), str) and row[c].strip())
            label = label_str(row.get(lcol, ""))
            if not text or not label:
                raise DataError(f"{src}:{n}: empty text or label")
            rec = {"text": text, "label": label}
            if gcol is not None:
                rec["group"] = str(row.get(gcol, ""))
            out.append(rec)
        return out

    data = records(p, rows)
    classes = sorted({r["label"] for r in data}, key=_natural_key)
    if len(classes) < 2:
        raise UserError(f"{p}: only one class ({classes}) in column {lcol!r}; a classifier needs at least 2")
    if test_file is not None:
        t = Path(test_file)
        t_columns, t_rows = read_table(t, "labelled", header=header)
        if t_columns != columns:
            raise UserError(f"{t}: columns {t_columns} differ from {p}'s {columns}")
        parts = {"test": records(t, t_rows)}
        test_fraction = 0.0
    else:
        parts = {"test": []}
    parts.update(train=[], val=[])
    rng = random.Random(seed)
    for c in classes:
        idx = [i for i, r in enumerate(data) if r["label"] == c]
        rng.shuffle(idx)
        n_test, n_val = round(len(idx) * test_fraction), round(len(idx) * val_fraction)
        for part, chunk in (("test", idx[:n_test]), ("val", idx[n_test : n_test + n_val]),
                            ("train", idx[n_test + n_val :])):  # fmt: skip
            parts[part].extend(data[i] for i in chunk)
    # train/val shuffled (the source may be sorted by label, e.g. waimai_10k); test stays in file order
    order = {id(r): i for i, r in enumerate(data)}
    for part in ("train", "val"):
        rng.shuffle(parts[part])
    if test_file is None:
        parts["test"].sort(key=lambda r: order[id(r)])
    for part in SPLIT_PARTS:
        if not parts[part]:
            raise UserError(f"{p}: the {part} part of the split is empty ({len(data)} rows); use a larger file "
                            "or other fractions")  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part in SPLIT_PARTS:
        atomic_write_text(out / f"{part}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in parts[part]))
    return {part: len(parts[part]) for part in SPLIT_PARTS}
