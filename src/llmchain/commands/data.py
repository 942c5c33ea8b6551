"""`llmchain data ...`: the data stage (prepare) and packing documents into token shards (pack)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from llmchain.commands import summary_table


def prepare(
    inputs: list[str] = typer.Argument(..., help="Files, folders (recursed) or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (documents/, rejected/, stats.json)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="data.yaml: steps, thresholds, readers."),
    workers: int | None = typer.Option(None, "--workers", "-w", help="Worker processes (default 1)."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Existing Ray cluster (default: start one)."),
    steps: str | None = typer.Option(None, "--steps", help="Comma-separated step names, in order."),
    text_field: str | None = typer.Option(None, "--text-field", help="JSONL/parquet field with the text."),
    columns: str | None = typer.Option(None, "--columns", help="CSV/TSV column(s) with the text, comma-separated."),
    no_header: bool = typer.Option(False, "--no-header", help="CSV/TSV files have no header row."),
    text_unit: str | None = typer.Option(None, "--text-unit", help=".txt/.md: one document per file|paragraph|line."),
    shard_mb: float | None = typer.Option(None, "--shard-mb", help="Shard size for large line-based files."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable record (exit code 2)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    canaries: int | None = typer.Option(None, "--canaries", help="Plant N secret canaries per copy count "
                                        "(OUT/canaries.json; measure with `llmchain privacy audit`)."),
    canary_copies: str | None = typer.Option(None, "--canary-copies", help="Copies of each canary group, e.g. 1,10,100."),
) -> None:
    """Read, clean, filter, redact and deduplicate raw text into OUT/documents/part-*.jsonl.gz."""
    from llmchain.config import DataConfig, load_config
    from llmchain.data.pipeline import Pipeline

    reader: dict = {}
    canary: dict = {}
    if config is not None:
        from llmchain.config import read_yaml

        reader = dict(read_yaml(config).get("reader") or {})
        canary = dict(read_yaml(config).get("canaries") or {})
    if canaries is not None:
        canary["count"] = canaries
    if canary_copies is not None:
        from llmchain.data.canaries import parse_copies

        canary["copies"] = parse_copies(canary_copies)
    for key, value in (("text_field", text_field), ("text_unit", text_unit)):
        if value is not None:
            reader[key] = value
    if columns is not None:
        reader["columns"] = [c.strip() for c in columns.split(",") if c.strip()]
    if no_header:
        reader["csv_header"] = False
    cfg = load_config(
        DataConfig,
        config,
        workers=workers,
        executor=executor,
        ray_address=ray_address,
        shard_mb=shard_mb,
        strict=strict or None,
        steps=[s.strip() for s in steps.split(",") if s.strip()] if steps else None,
        reader=reader or None,
        canaries=canary or None,
    )
    pipeline = Pipeline.from_config(cfg)
    run = lambda progress: pipeline.run(  # noqa: E731
        inputs, out, workers=cfg.workers, executor=cfg.executor, ray_address=cfg.ray_address,
        strict=cfg.strict, shard_mb=cfg.shard_mb, config=cfg, progress=progress,
    )
    if quiet:
        run(None)
        return
    from llmchain.data.report import print_summary, progress_bar

    with progress_bar() as progress:
        stats = run(progress)
    print_summary(stats, out)


def pack(
    docs: Path = typer.Argument(..., help="Documents: a prepared dir, .jsonl(.gz) or .txt."),
    tokenizer: Path = typer.Option(
        ..., "--tokenizer", "-t", help="Tokenizer dir (`llmchain tokenizer train`)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output shards dir (replaced atomically)."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Share held out for val (default 0.1)."
    ),
    split_by: str | None = typer.Option(
        None,
        "--split-by",
        help="documents (default): every k-th document to val; chars: last part of each text.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Tokenizer processes (default: CPU count, ≤ 8)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML with PackConfig fields; flags win."),
) -> None:
    """Tokenize DOCS into flat uint16/uint32 token shards (train/val) + shards.json (nanoGPT's format)."""
    from llmchain.config import PackConfig, load_config
    from llmchain.data.pack import pack_documents

    cfg = load_config(PackConfig, config, val_fraction=val_fraction, split_by=split_by, workers=workers)
    start = time.perf_counter()
    meta = pack_documents(docs, tokenizer, out, val_fraction=cfg.val_fraction, split_by=cfg.split_by,
                          workers=cfg.workers, shard_tokens=cfg.shard_tokens, show_progress=True)  # fmt: skip
    rows: dict[str, object] = {}
    for split, s in meta["splits"].items():
        rows[f"{split} documents"] = s["documents"]
        rows[f"{split} tokens"] = s["tokens"]
        rows[f"{split} bytes"] = s["bytes"]
    rows.update({"dtype": meta["dtype"], "seconds": f"{time.perf_counter() - start:.1f}", "saved to": out})
    summary_table("token shards", rows)
