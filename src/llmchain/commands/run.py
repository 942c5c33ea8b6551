"""`llmchain run RECIPE`: a whole chain from one YAML file, each stage skipped while it is up to date."""

from __future__ import annotations

from pathlib import Path

import typer


def rich_console():
    from rich.console import Console

    return Console(highlight=False)


def _print_plan(console, runner, plan, *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("stage", "type", "status", "time", "output / numbers"):
        table.add_column(col)
    for s in plan:
        numbers = ", ".join(f"{k} {v}" for k, v in list(s.summary.items())[:4])
        if s.run:
            status = "[green]ran[/]" if s.seconds else f"[yellow]will run[/]: {s.reason}"
        else:
            status = f"[dim]{s.reason}[/]"
        table.add_row(s.stage.name, s.stage.type.name, status, f"{s.seconds:.1f}s" if s.seconds else "",
                      numbers or short_path(runner.output_of(s.stage.name)))  # fmt: skip
    console.print(table)


def short_path(path: Path) -> str:
    import os

    rel = os.path.relpath(path)
    return rel if not rel.startswith("../..") else str(path)


def run(
    recipe: str = typer.Argument(..., help="A built-in recipe name (see `llmchain recipes`) or a YAML file."),
    only: str | None = typer.Option(None, "--only", help="Run just this stage (its inputs must exist)."),
    start: str | None = typer.Option(None, "--from", help="Re-run this stage and every stage after it."),
    until: str | None = typer.Option(None, "--until", help="Stop after this stage (run the part up to it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run and why; run nothing."),
    force: bool = typer.Option(False, "--force", help="Re-run every selected stage even when up to date."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Stages write into RUNS_DIR/NAME/STAGE/."),
    overrides: list[str] | None = typer.Option(None, "--set", help="STAGE.KEY=VALUE config override (repeatable)."),
    inputs: list[str] | None = typer.Option(None, "--input", help="STAGE.ROLE=PATH input override (repeatable)."),
) -> None:
    """Run a recipe's stages in order into runs/NAME/STAGE/, skipping those already up to date."""
    run_and_report(recipe, only=only, start=start, until=until, dry_run=dry_run, force=force, runs_dir=runs_dir,
                   overrides=overrides, inputs=inputs)  # fmt: skip


def run_and_report(recipe: str, *, dry_run: bool = False, **kwargs):
    from llmchain.recipe import run_recipe

    console = rich_console()
    runner, plan = run_recipe(recipe, dry_run=dry_run, log=console.print, **kwargs)
    ran = [s for s in plan if s.run and s.seconds]
    where = runner.run_dir
    if dry_run:
        _print_plan(console, runner, plan, title=f"{runner.recipe.name}: plan (dry run) — {where}")
    elif not ran:
        checked = [s for s in plan if s.reason != "not selected"]
        which = f"all {len(plan)} stages" if len(checked) == len(plan) else f"the {len(checked)} selected stage(s)"
        console.print(f"Nothing to do: {which} of '{runner.recipe.name}' are up to date ({where}).")
    else:
        total = sum(s.seconds for s in ran)
        _print_plan(console, runner, plan, title=f"{runner.recipe.name}: {len(ran)} stage(s) ran in {total:.0f}s")
    return runner, plan
