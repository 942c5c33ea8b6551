"""Reading evaluation inputs (labelled texts, prompt/reference pairs, predictions) and writing
evaluation outputs (`report.json` + plots + manifest.json, atomically).

Formats: JSONL (one object a line), a JSON array of objects, TSV (tab, no quoting — the GLUE/SST
convention) and CSV (RFC 4180 quoting), both with a header row. Plain text (one item a line) for
predictions and line-aligned references. Every problem names the file and line and says the fix.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_dir, atomic_write_json, write_manifest
from llmchain.errors import DataError, UserError

REPORT = "report.json"
TEXT_FIELDS = ("text", "sentence", "review", "content", "document", "question", "input")
LABEL_FIELDS = ("label", "labels", "class", "category", "coarse_label", "target", "sentiment")


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """A JSON file's top-level object, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file" if not p.exists() else f"{p}: is a directory, expected a {what} file")
    return p


def read_records(path: str | os.PathLike, what: str = "data") -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a JSONL / JSON-array / TSV / CSV file as dicts, with their 1-based line numbers.

    Raises DataError naming file:line for a malformed line, UserError for a missing/undecodable file.
    """
    p = _check_file(path, what)
    name = p.name.lower()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise DataError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{p}: expected a JSON array of objects")
        return data, list(range(1, len(data) + 1))
    if name.endswith(".jsonl"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"{p}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            lines.append(i)
        return rows, lines
    if name.endswith((".tsv", ".csv")):
        tsv = name.endswith(".tsv")
        reader = csv.reader(
            text.splitlines(), delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        )
        header = next(reader, None)
        if not header:
            raise DataError(f"{p}: empty file (a header row is expected)")
        for i, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise DataError(f"{p}:{i}: {len(cells)} columns, the header has {len(header)}")
            rows.append(dict(zip(header, cells, strict=True)))
            lines.append(i)
        return rows, lines
    raise UserError(f"{p}: unknown format; use .jsonl, .json, .tsv or .csv (with a header row)")


def pick_field(path: Path, rows: list[dict[str, Any]], given: str | None, candidates: Sequence[str], flag: str) -> str:
    """The column to use: `given`, else the first of `candidates` present; UserError listing the columns."""
    columns = list(rows[0].keys()) if rows else []
    if given is not None:
        if given not in columns:
            raise UserError(f"{path}: no column {given!r} (columns: {', '.join(columns)}); fix {flag}")
        return given
    for c in candidates:
        if c in columns:
            return c
    raise UserError(f"{path}: cannot tell which column to use (columns: {', '.join(columns)}); pass {flag}")


def read_labelled(
    path: str | os.PathLike, text_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of a labelled file; UserError/DataError naming file:line on a bad row."""
    rows, lines = read_records(path, "labelled")
    p = Path(path)
    if not rows:
        raise UserError(f"{p}: no rows")
    tcol = pick_field(p, rows, text_column, TEXT_FIELDS, "--text-column")
    lcol = pick_field(p, rows, label_column, LABEL_FIELDS, "--label-column")
    texts, labels = [], []
    for row, line in zip(rows, lines, strict=True):
        t, lab = row.get(tcol), row.get(lcol)
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{p}:{line}: empty or missing text in column {tcol!r}")
        if lab is None or (isinstance(lab, str) and not lab.strip()) or isinstance(lab, (list, dict)):
            raise DataError(f"{p}:{line}: missing or non-scalar label in column {lcol!r}")
        texts.append(t)
        labels.append(str(lab).strip())
    return texts, labels


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file (one item a line, no trailing newline kept)."""
    p = _check_file(path, what)
    try:
        return p.read_text(encoding="utf-8").split("\n")[:-1] if p.stat().st_size else []
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None


def default_out_dir(model_dir: str | os.PathLike | None, kind: str) -> Path:
    """Where an eval writes by default: RUN/eval/KIND for a run's model (RUN/final, RUN/checkpoints/x),
    so `llmchain report RUN` finds it; otherwise ./eval/KIND-MODELNAME (or ./eval/KIND)."""
    if model_dir is not None:
        m = Path(model_dir).resolve()
        for run in (m.parent, m.parent.parent):
            if (run / "metrics.jsonl").is_file() or (run / "config.yaml").is_file():
                return run / "eval" / kind
        return Path("eval") / f"{kind}-{m.name}"
    return Path("eval") / kind


def write_report(
    out_dir: str | os.PathLike,
    report: dict[str, Any],
    inputs: dict[str, str | os.PathLike | None],
    plots: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Write OUT/report.json (+ the PNGs that `plots(tmp_dir)` draws, + manifest.json) atomically."""
    report = {**report, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with atomic_dir(out_dir) as tmp:
        if plots is not None:
            report["plots"] = plots(tmp)
        atomic_write_json(tmp / REPORT, report)
        write_manifest(
            tmp,
            report.get("kind", "eval"),
            inputs={k: v for k, v in inputs.items() if v is not None},
            config=report.get("config"),
            counts={"examples": report.get("n")} if report.get("n") is not None else None,
        )
    return Path(out_dir)
