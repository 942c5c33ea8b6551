"""`llmchain index DOCS --out INDEX.sqlite`: thin — parse, build (or update) the index, print the counts."""

from __future__ import annotations

from pathlib import Path

import typer


def index(
    docs: list[str] = typer.Argument(..., help="Files, folders or globs (txt, md, jsonl, csv, tsv, parquet, html, "
                                     "warc) or a `data prepare` output dir."),
    out: Path = typer.Option(..., "--out", "-o", help="The index file (SQLite); updated in place if it exists."),
    encoder: str | None = typer.Option(None, "--encoder", help="minilm (bundled, default) or a local HF encoder dir."),
    passage_tokens: int | None = typer.Option(None, "--passage-tokens",
                                              help="Most estimated encoder tokens per passage (default 160)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Passages per encoder batch (default 32)."),
    text_field: str | None = typer.Option(None, "--text-field", help="JSONL/parquet field with the text (default text)."),
    column: list[str] | None = typer.Option(None, "--column", help="CSV/TSV text column(s), repeatable (default text)."),
    device: str | None = typer.Option(None, "--device", help="cpu (default), cuda, mps."),
    config: Path | None = typer.Option(None, "--config", help="YAML with IndexConfig fields; flags win."),
) -> None:
    """Split DOCS into passages, embed them and write one SQLite index (vectors + FTS5 keyword index).

    Run it again on the same folder to update: only new or changed files (by sha256) are embedded,
    removed files leave the index.
    """
    from llmchain.commands import summary_table
    from llmchain.config import IndexConfig, load_config, read_yaml
    from llmchain.rag.build import build_index

    data = read_yaml(config) if config else {}
    reader = dict(data.pop("reader", {}) or {})
    if text_field:
        reader["text_field"] = text_field
    if column:
        reader["columns"] = list(column)
    flags = {"encoder": encoder, "passage_tokens": passage_tokens, "batch_size": batch_size, "device": device,
             "reader": reader or None}
    cfg = load_config(IndexConfig, None, **{**data, **{k: v for k, v in flags.items() if v is not None}})
    s = build_index(docs, out, cfg)
    for skipped in s.skipped:
        typer.echo(str(skipped), err=True)
    for w in s.warnings[:20]:
        typer.echo(f"warning: {w}", err=True)
    if len(s.warnings) > 20:
        typer.echo(f"warning: ... and {len(s.warnings) - 20} more unreadable records", err=True)
    rate = f"{s.embedded / s.embed_seconds:,.1f} passages/s" if s.embedded and s.embed_seconds else "—"
    summary_table(f"index: {out}", {
        "files added": s.added, "files changed": s.changed, "files removed": s.removed,
        "files unchanged": s.unchanged, "files skipped": len(s.skipped),
        "sources (documents)": s.sources, "passages": s.passages,
        "passages embedded now": s.embedded, "passages cut by the encoder": s.truncated,
        "embedding": rate, "time": f"{s.seconds:.1f} s",
    })
