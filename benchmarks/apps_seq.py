"""Benchmark: the sequence recipes (summarize-zh, translate, summarize) at given CPU budgets, beside baselines.

    flock /tmp/llmchain-bench.lock env LLMCHAIN_DATA=/work/shared/data \\
        .venv/bin/python benchmarks/apps_seq.py [--recipes summarize-zh translate] [--budgets 5m 15m] [--quick]

Each (recipe, budget) runs `llmchain run RECIPE --set budget=B` from scratch into RUNS/B/RECIPE (the
whole test split is scored unless --quick), timing the whole run. Prints one table row per system with
its 95 % bootstrap interval, and the targets: summarize-zh's model ROUGE-L above the lead baseline,
translate's BLEU above the nearest-reference baseline — "above" only when the intervals do not overlap.
Several budgets of one recipe are the curve of score against minutes. Results are added (keyed by
recipe and budget) to benchmarks/results/apps_seq.json. `--record RUN_DIR=BUDGET=WALL_S` adds a run
made elsewhere (e.g. `llmchain run ... --set budget=15m` under `time`) without running anything.
`--plot PNG` draws the curve of every recipe in the results file (score against minutes of budget, the
model with its interval, the baseline to beat as a band); `--replot` only draws it, running nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llmchain.config import parse_duration
from llmchain.eval.bootstrap import compare

RESULTS = Path(__file__).parent / "results/apps_seq.json"
# recipe → (metric, baseline it must beat)
TARGETS = {"summarize-zh": ("rougeL", "lead"), "translate": ("bleu", "nearest"), "summarize": ("rougeL", "lead")}
SHOWN = {"summarize-zh": ["rouge1", "rouge2", "rougeL", "rougeL_words"], "summarize": ["rouge1", "rouge2", "rougeL"],
         "translate": ["bleu", "chrf"]}  # fmt: skip
QUICK = ["eval.limit=100"]


def record(run_dir: Path, recipe: str, budget: str, wall_s: float) -> dict:
    report = json.loads((run_dir / "eval/report.json").read_text(encoding="utf-8"))
    metric, base = TARGETS[recipe]
    model = next(s for s in report["systems"] if not s["baseline"])
    baseline = next(s for s in report["systems"] if s["name"] == base)
    ft = json.loads((run_dir / "finetune/manifest.json").read_text())["counts"]
    pre = json.loads((run_dir / "pretrain/final/manifest.json").read_text()) \
        if (run_dir / "pretrain/final/manifest.json").is_file() else {}  # fmt: skip
    return {
        "recipe": recipe, "budget": budget, "budget_s": parse_duration(budget), "wall_s": round(wall_s, 1),
        "n": report["n"], "run_dir": str(run_dir),
        "pretrain_steps": (pre.get("counts") or {}).get("steps"), "sft_steps": ft.get("steps"),
        "pretrain_tokens_per_s": _median_rate(run_dir / "pretrain/metrics.jsonl"),
        "sft_epochs": ft.get("epochs_run"), "sft_best_step": ft.get("best_step"),
        "sft_best_val_loss": ft.get("best_val_loss"), "sft_early_stopped": ft.get("early_stopped"),
        "systems": [{k: s.get(k) for k in ("name", "title", "baseline", *SHOWN[recipe], "ci")} for s in
                    report["systems"]],
        "target": {"metric": metric, "baseline": base, "verdict": compare(model["ci"][metric], baseline["ci"][metric])},
    }  # fmt: skip


def _median_rate(metrics: Path) -> float | None:
    """Median training tokens/s of a run's log lines: what the machine gave it (other jobs slow it down)."""
    if not metrics.is_file():
        return None
    rates = sorted(r["tokens_per_s"] for r in map(json.loads, metrics.read_text().splitlines()) if "tokens_per_s" in r)
    return round(rates[len(rates) // 2]) if rates else None


def run_one(recipe: str, budget: str, runs: Path, quick: bool) -> dict:
    from llmchain.recipe import run_recipe

    out = runs / budget
    t = time.perf_counter()
    run_recipe(recipe, runs_dir=out, force=True, overrides=[f"budget={budget}", *(QUICK if quick else [])],
               log=lambda m: print(m, flush=True))  # fmt: skip
    return record(out / recipe, recipe, budget, time.perf_counter() - t)


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        cols = SHOWN[r["recipe"]]
        lines.append(f"\n{r['recipe']} — budget {r['budget']} (whole run {r['wall_s'] / 60:.1f} min wall), "
                     f"{r['n']} test items; pretraining {r['pretrain_steps']} steps ({r.get('pretrain_tokens_per_s')} "
                     f"tokens/s), SFT {r['sft_steps']} steps ({r['sft_epochs']} epochs, best at step "
                     f"{r.get('sft_best_step')})")  # fmt: skip
        lines.append("| system | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for s in r["systems"]:
            cells = [f"{s[c]:.1f} [{s['ci'][c][0]:.1f}, {s['ci'][c][1]:.1f}]" if s.get(c) is not None else "—"
                     for c in cols]  # fmt: skip
            lines.append(f"| {s['title']} | " + " | ".join(cells) + " |")
        t = r["target"]
        word = {"better": "ABOVE", "worse": "below", "overlap": "not separable from"}[t["verdict"]]
        lines.append(f"target: model {t['metric']} {word} the {t['baseline']} baseline (95 % intervals)")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> Path:
    """One panel per recipe: the target metric against the budget in minutes, the model's points with
    their 95 % intervals, the baseline it must beat as a band (its interval; the test set is the same at
    every budget, so is the baseline)."""
    from llmchain.eval.plots import BASELINE_COLOR, MODEL_COLOR, _plt

    plt = _plt()
    recipes = [r for r in TARGETS if any(x["recipe"] == r for x in rows)]
    fig, axes = plt.subplots(1, len(recipes), figsize=(4.6 * len(recipes), 3.6), squeeze=False)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        pts = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["budget_s"])
        metric, base = TARGETS[recipe]
        x = [r["budget_s"] / 60 for r in pts]
        model = [next(s for s in r["systems"] if not s["baseline"]) for r in pts]
        y = [s[metric] for s in model]
        err = [[v - s["ci"][metric][0] for v, s in zip(y, model, strict=True)],
               [s["ci"][metric][1] - v for v, s in zip(y, model, strict=True)]]  # fmt: skip
        b = next(s for s in pts[-1]["systems"] if s["name"] == base)
        span = [0, max(x) * 1.08]
        ax.fill_between(span, *b["ci"][metric], color=BASELINE_COLOR, alpha=0.45, lw=0)
        ax.plot(span, [b[metric]] * 2, color="#718096", lw=1, label=f"{base} baseline ({b[metric]:.1f})")
        ax.errorbar(x, y, yerr=err, color=MODEL_COLOR, marker="o", capsize=3, label="model")
        ax.set_xlim(*span)
        ax.set_ylim(0, max(b["ci"][metric][1], *(s["ci"][metric][1] for s in model)) * 1.15)
        ax.set_xlabel("budget (CPU minutes)")
        ax.set_ylabel(metric)
        ax.set_title(f"{recipe}: {metric}, {pts[-1]['n']} test items", fontsize=10)
        ax.legend(fontsize=8, loc="center right")
        ax.spines[["top", "right"]].set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=["summarize-zh", "translate"], choices=sorted(TARGETS))
    ap.add_argument("--budgets", nargs="+", default=["15m"])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-apps-seq"))
    ap.add_argument("--quick", action="store_true", help="budget 2m and 100 test items: a smoke run")
    ap.add_argument("--record", nargs="*", default=[], metavar="RUN_DIR=BUDGET=WALL_S")
    ap.add_argument("--plot", type=Path, help="draw the curves of the results file into this PNG")
    ap.add_argument("--replot", action="store_true", help="with --plot: draw only, run and record nothing")
    args = ap.parse_args()
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot PNG")
        print(plot_curves(json.loads(RESULTS.read_text()), args.plot))
        return
    rows = []
    if args.record:
        for item in args.record:
            d, budget, wall = item.split("=")
            rows.append(record(Path(d), Path(d).name, budget, float(wall)))
    else:
        for budget in ["2m"] if args.quick else args.budgets:
            for recipe in args.recipes:
                rows.append(run_one(recipe, budget, args.runs_dir, args.quick))
    print(table(rows))
    if args.quick:
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    keep = [o for o in old if (o["recipe"], o["budget"]) not in {(r["recipe"], r["budget"]) for r in rows}]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(sorted(keep + rows, key=lambda r: (r["recipe"], r["budget_s"])), indent=1,
                                  ensure_ascii=False) + "\n")  # fmt: skip
    if args.plot:
        print(plot_curves(json.loads(RESULTS.read_text()), args.plot))


if __name__ == "__main__":
    main()
