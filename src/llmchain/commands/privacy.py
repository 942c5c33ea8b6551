"""`llmchain privacy audit RUN`: canary exposure, extraction and membership inference of a trained model."""

from __future__ import annotations

from pathlib import Path

import typer


def audit(
    run: Path = typer.Argument(
        ..., help="Run dir, model dir, or a recipe's run dir holding one training run."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default: RUN/privacy)."),
    data: Path | None = typer.Option(
        None, "--data", help="Documents dir with canaries.json (default: traced)."
    ),
    shards: Path | None = typer.Option(None, "--shards", help="Token shards dir (default: traced)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML: exact_max, samples, batch_size, ..."
    ),
    samples: int | None = typer.Option(
        None, "--samples", help="Candidates for the extrapolation when |R| is large."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ..."),
) -> None:
    """Exposure (Carlini et al. 2019) and greedy extraction of every canary, by copy count, and the
    loss-threshold membership-inference AUC: OUT/report.json + privacy_exposure.png."""
    from llmchain.config import load_config
    from llmchain.errors import UserError
    from llmchain.privacy import PrivacyAuditConfig, resolve_run, run_audit, summary_table

    cfg = load_config(PrivacyAuditConfig, config, samples=samples, device=device)
    if data is not None and not data.is_dir():
        raise UserError(f"--data {data}: no such directory")
    try:
        model, docs, traced_shards = resolve_run(run)
    except UserError:
        if data is None:
            raise
        from llmchain.eval.chain import trace

        model, docs, traced_shards = trace(run).model, data, None
        if model is None:
            raise
    report, where = run_audit(
        out or (Path(run) / "privacy"), model, data or docs, shards or traced_shards, cfg
    )
    typer.echo("\n".join(summary_table(report)))
    typer.echo(f"report: {where / 'report.json'}")
