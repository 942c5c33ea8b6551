"""`llmchain tokenizer train`: a byte-level BPE tokenizer that `transformers.AutoTokenizer` opens."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from llmchain.commands import summary_table


def train(
    docs: Path = typer.Argument(
        ..., help="Documents: a prepared dir (`llmchain data prepare`), .jsonl(.gz) or .txt."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output tokenizer dir (replaced atomically)."),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Vocabulary size (default 4096; ≥ 260)."
    ),
    min_frequency: int | None = typer.Option(
        None, "--min-frequency", help="Minimum count of a merge (default 2)."
    ),
    max_documents: int | None = typer.Option(None, "--max-documents", help="Train on the first N documents."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Leave out the val split `data pack` makes with the same value (default 0)."
    ),
    split_by: str | None = typer.Option(None, "--split-by", help="documents or chars, as for `data pack`."),
    config: Path | None = typer.Option(None, "--config", help="YAML with TokenizerConfig fields; flags win."),
) -> None:
    """Train byte-level BPE on DOCS and save a dir that `transformers.AutoTokenizer` opens."""
    from llmchain.config import TokenizerConfig, load_config
    from llmchain.tokenizer import train_tokenizer

    cfg = load_config(TokenizerConfig, config, vocab_size=vocab_size, min_frequency=min_frequency,
                      max_documents=max_documents, val_fraction=val_fraction, split_by=split_by)  # fmt: skip
    start = time.perf_counter()
    result = train_tokenizer(docs, cfg.vocab_size, out, min_frequency=cfg.min_frequency,
                             max_documents=cfg.max_documents, model_max_length=cfg.model_max_length,
                             val_fraction=cfg.val_fraction, split_by=cfg.split_by,
                             show_progress=sys.stderr.isatty())  # fmt: skip
    summary_table("tokenizer trained", {
        "documents": result["documents"], "characters": result["characters"],
        "vocab size": result["vocab_size"], "seconds": f"{time.perf_counter() - start:.1f}", "saved to": out,
    })  # fmt: skip
