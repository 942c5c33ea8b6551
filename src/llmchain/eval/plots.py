"""PNG charts for eval reports and model cards (matplotlib, Agg backend: no display needed).

Each function draws one figure to `path` and returns the file name. Models are drawn in one
colour, baselines in grey, so "what the model buys" is visible at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_COLOR = "#2b6cb0"
BASELINE_COLOR = "#a0aec0"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path.name


def bars(path: Path, systems: Sequence[dict[str, Any]], metric: str, title: str) -> str:
    """Horizontal bars of `metric` for each system (model coloured, baselines grey), values printed."""
    plt = _plt()
    rows = [s for s in systems if isinstance(s.get(metric), (int, float)) and math.isfinite(s[metric])]
    fig, ax = plt.subplots(figsize=(7, 0.55 * max(len(rows), 1) + 1.2))
    names = [s.get("title", s["name"]) for s in rows][::-1]
    values = [float(s[metric]) for s in rows][::-1]
    colors = [BASELINE_COLOR if s.get("baseline") else MODEL_COLOR for s in rows][::-1]
    ax.barh(names, values, color=colors)
    top = max(values, default=1.0) or 1.0
    for y, v in enumerate(values):
        ax.text(v + top * 0.01, y, f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.18)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def confusion(path: Path, matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    """Confusion matrix heat map (rows: true label, columns: predicted), counts in the cells."""
    plt = _plt()
    k = len(labels)
    size = min(max(3.5, 0.6 * k + 2), 12)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), [str(x) for x in labels], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(r) for r in matrix), default=1) or 1
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_title(f"confusion: {title}", fontsize=10)
    return _save(fig, path)


def loss_curves(
    path: Path, records: Sequence[dict[str, Any]], baseline_bpb: dict[str, float] | None = None
) -> str | None:
    """Train/val loss against step (left) and val bits-per-byte with baseline lines (right).

    `records` are metrics.jsonl rows ({"step", "loss", "split"?, "bits_per_byte"?}). None when there is
    nothing to draw.
    """
    plt = _plt()
    train = [(r["step"], r["loss"]) for r in records if r.get("split", "train") == "train" and "loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "val" and "loss" in r]
    val_bpb = [(r["step"], r["bits_per_byte"]) for r in records
               if r.get("split") == "val" and isinstance(r.get("bits_per_byte"), (int, float))]
    if not train and not val:
        return None
    two = bool(val_bpb or baseline_bpb)
    # one step axis for both panels: a single val point must not get a zoomed axis of its own
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6.5, 4), sharex=True)
    ax = axes[0] if two else axes
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color=MODEL_COLOR, lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val", color="#dd6b20", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if two:
        ax2 = axes[1]
        if val_bpb:
            ax2.plot(*zip(*val_bpb, strict=True), "o-", color="#dd6b20", ms=3, label="model (val)")
            ax2.annotate(f"{val_bpb[-1][1]:.3f}", val_bpb[-1], textcoords="offset points", xytext=(-10, 6),
                         fontsize=8, color="#dd6b20")  # fmt: skip
        for i, (name, v) in enumerate((baseline_bpb or {}).items()):
            ax2.axhline(v, ls="--", color=["#718096", "#a0aec0", "#4a5568"][i % 3], label=name)
        ax2.set_xlabel("step")
        ax2.set_ylabel("bits per byte")
        ax2.set_title("val bits-per-byte vs. baselines (lower is better)")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    return _save(fig, path)


def funnel(path: Path, steps: Sequence[tuple[str, int]], title: str = "documents kept after each step") -> str:
    """Documents remaining after each data step (a bar per step, in order)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(steps), 1) + 1.2))
    names = [s for s, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    ax.barh(names, values, color=MODEL_COLOR)
    top = max(values, default=1) or 1
    for y, v in enumerate(values):
        ax.text(v + top * 0.01, y, f"{v:,}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.2)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def exposure(path: Path, rows: list[dict[str, Any]], space: int) -> str:
    """Privacy audit (llmchain.privacy): the exposure of every canary against its copies planted
    (controls at 0); filled = extracted by greedy decoding."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = sorted({r["copies"] for r in rows})
    pos = {c: i for i, c in enumerate(xs)}
    for r in rows:
        jitter = (int(r["id"].lstrip("c") or 0) % 7 - 3) * 0.03  # spread equal copies apart
        ax.scatter(
            pos[r["copies"]] + jitter,
            r["exposure"],
            s=36,
            edgecolors=MODEL_COLOR,
            facecolors=MODEL_COLOR if r["extracted"] else "none",
            marker="o" if r["language"] == "en" else "s",
        )
    if space > 1:
        ax.axhline(math.log2(space), color=BASELINE_COLOR, ls="--", lw=1)
        ax.text(len(xs) - 0.5, math.log2(space), "max: log2|R|", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(c) if c else "unseen" for c in xs])
    ax.set_xlabel("copies planted (○ en, □ zh; filled: extracted by greedy decoding)")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("Canary exposure")
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)
