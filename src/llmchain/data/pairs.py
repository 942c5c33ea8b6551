"""A sequence task's (source, reference) files → the JSONL each stage of its recipe reads.

    write_pairs("dev.tsv", None, "runs/x/sft_data", PairsConfig(format="sft", instruction="Summarise:"))

Sources are whatever `eval generate` reads (`eval.generate.read_pairs`): a TSV/CSV/JSONL of prompt and
reference columns (CSL's abstract/title, Opinosis' sentences/references), or a plain text file of
sources with a line-aligned reference file (Multi30k's val.en + val.de). Three outputs:

- `sft`: `train.jsonl`, Alpaca records {instruction, input, output}, one per reference, for `finetune sft`
  (the user turn is "instruction\\n\\ninput" — what `eval generate` sends with the same `instruction`);
- `eval`: `test.jsonl`, {prompt, references}, for `eval generate` (its baselines see the prompt alone);
- `text`: `corpus.jsonl`, {text} documents (each source, each reference), for `data prepare` → pretraining.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_dir, write_manifest
from llmchain.config import PairsConfig
from llmchain.errors import UserError

OUTPUT_FILES = {"sft": "train.jsonl", "eval": "test.jsonl", "text": "corpus.jsonl"}


def select_rows(n: int, cfg: PairsConfig) -> list[int]:
    """Row indices kept: every `test_every`-th row is test (rows 0, N, 2N, ...), the others train."""
    rows = list(range(n))
    if cfg.test_every and cfg.split != "all":
        rows = [i for i in rows if (i % cfg.test_every == 0) == (cfg.split == "test")]
    elif cfg.split != "all":
        raise UserError(f"config field 'split': {cfg.split!r} needs test_every > 0 (which rows are test)")
    return rows[: cfg.limit] if cfg.limit else rows


def pair_records(prompts: list[str], refs: list[list[str]], cfg: PairsConfig) -> list[dict[str, Any]]:
    """The JSON records of `cfg.format` for the kept rows."""
    out: list[dict[str, Any]] = []
    for i in select_rows(len(prompts), cfg):
        src = prompts[i].strip()
        if cfg.max_source_chars:
            src = src[: cfg.max_source_chars]
        if cfg.format == "sft":
            out += [{"instruction": cfg.instruction, "input": src, "output": r.strip()} for r in refs[i]]
        elif cfg.format == "eval":
            out.append({"prompt": src, "references": [r.strip() for r in refs[i]]})
        else:
            out += [{"text": t} for t in [src, *(r.strip() for r in refs[i])] if t]
    return out


def write_pairs(source: str | os.PathLike, target: str | os.PathLike | None, out_dir: str | os.PathLike,
                cfg: PairsConfig) -> dict[str, Any]:  # fmt: skip
    """Read the task files, write OUT/<train|test|corpus>.jsonl + manifest atomically; returns counts.

    UserError/DataError (naming the file and line) for unreadable pairs; UserError for an SFT without
    an instruction or a selection that keeps no row."""
    from llmchain.eval.generate import read_pairs

    if cfg.format == "sft" and not cfg.instruction.strip():
        raise UserError("config field 'instruction': an sft pairs stage needs one (e.g. 'Summarise:')")
    prompts, refs = read_pairs(source, cfg.prompt_field, cfg.reference_field, [str(target)] if target else None)
    records = pair_records(prompts, refs, cfg)
    if not records:
        raise UserError(f"{source}: no rows left after split={cfg.split!r}, test_every={cfg.test_every}")
    name = OUTPUT_FILES[cfg.format]
    counts = {"rows": len(select_rows(len(prompts), cfg)), "records": len(records)}
    inputs = {"source": str(source), **({"target": str(target)} if target else {})}
    with atomic_dir(out_dir) as tmp:
        (tmp / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        write_manifest(tmp, f"pairs-{cfg.format}", inputs=inputs, config=cfg.model_dump(mode="json"), counts=counts)
    return {**counts, "file": str(Path(out_dir) / name)}
