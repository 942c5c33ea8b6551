"""The progress bar while `data prepare` runs and the one-screen summary at the end (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A callback `progress(phase, done, total)` drawing one bar per phase on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    tasks: dict[str, Any] = {}
    bar = Progress(*columns, console=Console(stderr=True))

    def update(phase: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()  # started on the first report, so an early error prints nothing else
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        yield update
    except BaseException:
        bar.live.transient = True  # an error message then stands on its own line
        raise
    finally:
        if tasks:
            bar.stop()


def print_summary(stats: dict[str, Any], out: str | Path) -> None:
    """Docs in/out and the main removal reasons per step, and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data prepare → {out}", show_lines=False)
    table.add_column("step")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("removed", justify="right")
    table.add_column("top reasons")
    for s in stats["steps"]:
        removed = sum(s["removed"].values())
        top = sorted(s["removed"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{r} {c:,}" for r, c in top)
        if not reasons and s["counters"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in list(s["counters"].items())[:3])
        table.add_row(s["name"], f"{s['in']:,}", f"{s['out']:,}", f"{removed:,}", reasons)
    console = Console()
    console.print(table)
    secs = stats["seconds"]["total"]
    rate = stats["documents_read"] / secs if secs else 0.0
    console.print(
        f"kept {stats['kept']:,} of {stats['documents_read']:,} documents from {stats['files']:,} files "
        f"({stats['shards']:,} shards) in {secs:.1f}s ({rate:,.0f} docs/s); "
        f"{stats['rejected']:,} rejected (unreadable {stats['unreadable']:,}, unknown files {len(stats['unknown_files'])})"
    )
    console.print(f"documents: {Path(out) / 'documents'}   rejected: {Path(out) / 'rejected'}   stats: {Path(out) / 'stats.json'}")
