"""Evaluation outputs (`report.json` + plots + manifest.json, atomically) and the plain-text inputs of
evaluation (one item a line: predictions, line-aligned references). Tables (labelled texts,
prompt/reference pairs) are read by `llmchain.data.tables`, the one reader for every command.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_dir, atomic_write_json, write_manifest
from llmchain.errors import UserError

REPORT = "report.json"


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


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file (one item a line, no trailing newline kept)."""
    p = _check_file(path, what)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    if not text:
        return []
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines  # a last line without its newline is still a line


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
