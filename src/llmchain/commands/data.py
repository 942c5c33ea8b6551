"""`llmchain data ...`: the data stage (prepare) and packing documents into token shards (pack)."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Raw text → clean, deduplicated documents; documents → token shards.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
