"""The leaderboard as tables on the terminal and as a plot of ratings with their 95 % intervals."""

from __future__ import annotations

import math
from pathlib import Path

from llmchain.arena.ratings import Leaderboard


def print_leaderboard(console, lb: Leaderboard) -> None:
    from rich.table import Table

    title = f"arena leaderboard: Bradley-Terry, Elo scale, {lb.bootstrap} bootstrap resamples"
    if lb.style_coef is not None:
        title += f"; style control (length coefficient {lb.style_coef:+.3f})"
    table = Table(title=title, title_justify="left")
    for col in ("rank (UB)", "model", "rating", "95 % interval", "votes"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in lb.rows():
        table.add_row(str(r["rank_ub"]), r["model"], f"{r['rating']:.1f}",
                      f"{r['lower']:.1f} – {r['upper']:.1f}", str(r["votes"]))  # fmt: skip
    console.print(table)
    for name, matrix, fmt in (("win rate of row over column (ties half)", lb.win_rate, "{:.2f}"),
                              ("battles per pair", lb.pair_votes, "{:d}")):  # fmt: skip
        t = Table(title=name, title_justify="left")
        t.add_column("")
        for m in lb.models:
            t.add_column(m, justify="right")
        for i, m in enumerate(lb.models):
            cells = []
            for j in range(len(lb.models)):
                v = matrix[i, j]
                cells.append("–" if i == j or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
            t.add_row(m, *cells)
        console.print(t)


def plot_leaderboard(lb: Leaderboard, path: str | Path) -> Path:
    """Ratings as points with their intervals, best at the top; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmchain.artifacts import atomic_path

    k = len(lb.models)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.4 * k))
    ys = list(range(k))[::-1]
    ax.errorbar(lb.rating, ys, xerr=[lb.rating - lb.lower, lb.upper - lb.rating], fmt="o", capsize=4)
    ax.set_yticks(ys, lb.models)
    ax.set_xlabel("rating (Elo scale); bars: 95 % bootstrap interval")
    ax.set_title(f"arena: {int(lb.votes.sum() // 2)} votes")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
