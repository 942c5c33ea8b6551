"""`llmchain report RUN`: the model card (report.md, report.html, PNGs) from the manifests along the chain."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    path: Path = typer.Argument(..., help="A run dir (runs/NAME) or a model dir."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Card dir (default: RUN/report or MODEL-report)."),
    evals: list[Path] | None = typer.Option(None, "--eval", help="Also include this eval report dir; repeatable."),
    samples: int | None = typer.Option(None, "--samples", help="Sample generations in the card (default 3; 0 none)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with ReportConfig fields; flags win."),
) -> None:
    """Write a model card (report.md, report.html, PNGs) from the manifests along the chain."""
    from rich.console import Console

    from llmchain.config import ReportConfig, load_config
    from llmchain.eval.report import build_card

    cfg = load_config(ReportConfig, config, samples=samples)
    out_dir, facts = build_card(path, out, cfg, extra_evals=evals or None)
    console = Console()
    found = {k: "found" if facts[k].get("found", True) else "missing" for k in ("model", "data", "tokenizer", "shards")}
    found["training run"] = "found" if facts["training"]["run"] else "missing"
    found["eval reports"] = str(len(facts["evals"]))
    console.print("model card: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    console.print(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.html'}")
