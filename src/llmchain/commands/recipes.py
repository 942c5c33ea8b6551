"""`llmchain recipes [show NAME]`: list the built-in recipes, or print one to copy and edit."""

from __future__ import annotations

import typer

from llmchain.commands.run import rich_console


def list_recipes(ctx: typer.Context) -> None:
    """List the built-in recipes."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from llmchain.config import read_yaml
    from llmchain.recipe import builtin_recipes

    table = Table(title="built-in recipes (llmchain recipes show NAME; llmchain run NAME)", title_justify="left")
    for col in ("name", "stages", "CPU budget", "description"):
        table.add_column(col)
    for name, path in builtin_recipes().items():
        data = read_yaml(path)
        first = str(data.get("description", "")).strip().split(": ")[0].split(". ")[0]
        budget = str(data["budget"]) if data.get("budget") else "—"
        table.add_row(name, " → ".join(data.get("stages") or {}), budget, first)
    rich_console().print(table)


def show(name: str = typer.Argument(..., help="A built-in recipe name.")) -> None:
    """Print a built-in recipe's YAML (copy it, edit it, run it with `llmchain run FILE`)."""
    from llmchain.recipe import resolve_recipe_path

    typer.echo(resolve_recipe_path(name).read_text(encoding="utf-8"), nl=False)
