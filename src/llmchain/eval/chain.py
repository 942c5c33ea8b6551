"""Trace a model back along its chain: model → run → token shards → tokenizer → documents → sources.

Every artifact dir has a `manifest.json` whose `inputs` name the dirs it was made from; this module
follows them (and the run's `config.yaml` where a manifest is missing) and identifies each dir by
what it holds, not by its role name, so chains built by hand, by recipes or by other tools all work.
Nothing is guessed: a link that cannot be followed is left empty and the card says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmchain.artifacts import read_manifest
from llmchain.errors import UserError
from llmchain.eval.io import read_json_dict


def _is_run(d: Path) -> bool:
    return (d / "metrics.jsonl").is_file() or ((d / "config.yaml").is_file() and (d / "final").is_dir())


def _is_model(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("model*.safetensors"))


def kind_of(d: Path) -> str | None:
    """What an artifact dir is: model, run, shards, tokenizer, documents, eval — or None."""
    if not d.is_dir():
        return None
    if _is_model(d):
        return "model"
    if _is_run(d):
        return "run"
    if (d / "shards.json").is_file():
        return "shards"
    if (d / "tokenizer.json").is_file():
        return "tokenizer"
    if (d / "stats.json").is_file() or (d / "documents").is_dir():
        return "documents"
    if (d / "report.json").is_file():
        return "eval"
    return None


@dataclass
class Chain:
    """The artifacts found for one model, each a dir (or None when it could not be found)."""

    start: Path
    model: Path | None = None
    run: Path | None = None
    shards: Path | None = None
    tokenizer: Path | None = None
    documents: Path | None = None
    base_models: list[Path] = field(default_factory=list)  # models this one was fine-tuned from
    other_inputs: list[dict[str, str]] = field(default_factory=list)  # files (fine-tuning data, sources ...)
    evals: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def manifest(self, name: str) -> dict[str, Any] | None:
        d = getattr(self, name)
        return read_manifest(d) if d is not None else None


def _run_of(model: Path) -> Path | None:
    for cand in (model.parent, model.parent.parent):  # RUN/final, RUN/checkpoints/step-N
        if _is_run(cand):
            return cand
    return None


def _newest_model(run: Path) -> Path | None:
    if _is_model(run / "final"):
        return run / "final"
    steps = sorted((p for p in (run / "checkpoints").glob("step-*") if _is_model(p)),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)  # fmt: skip
    return steps[-1] if steps else None


def _input_paths(d: Path) -> list[tuple[str, Path]]:
    inputs = (read_manifest(d) or {}).get("inputs") or {}
    out = []
    for role, entry in inputs.items():
        p = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(p, str) and p:
            out.append((str(role), Path(p)))
    return out


def _config_paths(run: Path) -> list[tuple[str, Path]]:
    """Paths named in a run's config.yaml (data, tokenizer, init_from, ...), for runs without a model manifest."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    out = []
    for key in ("data", "train", "tokenizer", "init_from", "base_model", "model"):
        v = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(v, str) and v:
            p = Path(v)
            out.append((key, p if p.is_absolute() else (run.parent / p if not p.exists() else p)))
    return out


def trace(start: str | Path) -> Chain:
    """Follow manifests from a run dir or a model dir; UserError when `start` is neither."""
    start = Path(start)
    if not start.is_dir():
        raise UserError(f"{start}: no such directory (give a run dir or a model dir)")
    kind = kind_of(start)
    chain = Chain(start=start.resolve())
    if kind == "run":
        chain.run = start.resolve()
        chain.model = _newest_model(start)
    elif kind == "model":
        chain.model = start.resolve()
        chain.run = _run_of(chain.model)
    else:
        raise UserError(f"{start}: not a run dir (metrics.jsonl/config.yaml) or a model dir (config.json + "
                        "model.safetensors)")  # fmt: skip
    if chain.model is not None:
        chain.model = chain.model.resolve()
    queue: list[tuple[str, Path]] = []
    if chain.model is not None:
        queue += _input_paths(chain.model)
    if chain.run is not None:
        queue += _config_paths(chain.run)
    seen: set[Path] = {p for p in (chain.model, chain.run) if p is not None}
    while queue:
        role, p = queue.pop(0)
        p = p.resolve()
        if p in seen:
            continue
        seen.add(p)
        k = kind_of(p)
        if k is None:
            if p.is_file() or not p.exists():
                chain.other_inputs.append({"role": role, "path": str(p), "exists": str(p.exists())})
            continue
        if k == "model":
            chain.base_models.append(p)
        elif k in ("shards", "tokenizer", "documents") and getattr(chain, k) is None:
            setattr(chain, k, p)
        queue += _input_paths(p)
    chain.evals = find_eval_reports(chain)
    return chain


def find_eval_reports(chain: Chain, extra: list[Path] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """report.json files of `llmchain eval` runs about this model: under the run dir (and the recipe
    dir above it), the model dir's neighbours, and `extra` dirs. Reports about another model are
    skipped; baseline-only reports are kept only when they sit inside this run."""
    # bounded patterns, not "**": the parent of a run may be a big directory (runs/, a home dir)
    patterns: list[tuple[Path, str]] = []
    if chain.run is not None:
        patterns += [(chain.run, "*/report.json"), (chain.run, "*/*/report.json"), (chain.run, "*/*/*/report.json")]
        patterns += [(chain.run.parent, "*/report.json"), (chain.run.parent, "*/*/report.json")]
    elif chain.model is not None:
        patterns += [(chain.model.parent, "*/report.json"), (chain.model.parent, "*/*/report.json")]
    found: dict[Path, dict[str, Any]] = {}
    for root, pattern in patterns:
        for rp in sorted(root.glob(pattern)):
            data = read_json_dict(rp)
            if not data or not str(data.get("kind", "")).startswith("eval-"):
                continue
            about = data.get("model")
            mine = about is not None and chain.model is not None and Path(about).resolve() == chain.model
            inside = chain.run is not None and chain.run in rp.resolve().parents
            if mine or (about is None and inside):
                found[rp.resolve()] = data
    for d in extra or []:
        rp = Path(d) / "report.json" if Path(d).is_dir() else Path(d)
        data = read_json_dict(rp)
        if not data:
            raise UserError(f"{d}: no readable report.json (from `llmchain eval ...`)")
        found[rp.resolve()] = data
    order = {"eval-lm": 0, "eval-classify": 1, "eval-generate": 2}
    return sorted(found.items(), key=lambda kv: (order.get(kv[1].get("kind"), 3), str(kv[0])))
