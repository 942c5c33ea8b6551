"""Prompt files for the arena: plain text (one prompt a line) or JSON / JSONL records."""

from __future__ import annotations

import json
from pathlib import Path

from llmchain.errors import UserError

FIELDS = ("prompt", "instruction", "question", "text")


def _record_prompt(rec, where: str) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        for key in FIELDS:
            if isinstance(rec.get(key), str) and rec[key].strip():
                extra = rec.get("input") if key == "instruction" else None  # Alpaca: instruction + input
                return rec[key] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    raise UserError(f"{where}: no prompt field (expected one of {', '.join(FIELDS)})")


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of `path` (.txt: one a line; .json: a list; .jsonl: one record a line), blanks
    skipped, duplicates dropped. UserError naming the file and line for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts {path}: file not found")
    text = path.read_text(encoding="utf-8-sig")
    out: list[str] = []
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of prompts or records")
        out = [_record_prompt(r, f"{path}: item {i}") for i, r in enumerate(data)]
    elif path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not JSON ({e})") from None
                out.append(_record_prompt(rec, f"{path}:{n}"))
    else:
        out = text.splitlines()
    prompts = list(dict.fromkeys(p.strip() for p in out if p.strip()))
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in the file")
    return prompts
