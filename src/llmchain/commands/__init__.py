"""The CLI's commands: one module per command (or command group), named for it; `llmchain.cli` holds the
table that maps each command to its function. Thin: parse the flags, call the stage function, print.

Modules import only typer at the top, so `llmchain --help` is instant; stage code is imported inside
each command.
"""

from __future__ import annotations


def summary_table(title: str, rows: dict[str, object]) -> None:
    """A two-column key/value table: the one-screen summary a stage prints when it ends."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)
