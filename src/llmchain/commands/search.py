"""`llmchain search INDEX "query"`: thin — open the index, search, print the hits (or JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def search(
    index: Path = typer.Argument(..., help="An index file from `llmchain index`."),
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "--k", "-k", help="How many passages."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (RRF of dense + keyword), dense or keyword."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The K passages of INDEX that best answer QUERY, with their source and character offsets."""
    from llmchain.errors import UserError
    from llmchain.rag.index import MODES, Index

    if mode not in MODES:  # before loading anything
        raise UserError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if not query.strip():
        raise UserError("the query is empty")
    with Index.open(index) as idx:
        res = idx.search(query, k=k, mode=mode)
        limit = idx.encoder.max_tokens if mode != "keyword" else None
    if res.query_truncated:
        typer.echo(f"note: the query is longer than the encoder's {limit} tokens; its dense part used the first "
                   f"{limit}", err=True)
    if as_json:
        typer.echo(json.dumps({"query": query, "mode": res.mode, "query_truncated": res.query_truncated,
                               "hits": [h.__dict__ for h in res.hits]}, ensure_ascii=False, indent=2))
        return
    if not res.hits:
        typer.echo("no passages found")
        return
    for rank, h in enumerate(res.hits, 1):
        typer.echo(f"{rank}. {h.source} [{h.start}:{h.end}]  score {h.score:.4f}")
        typer.echo("   " + " ".join(h.text.split())[:300])
