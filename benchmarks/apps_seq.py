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
        "sft_epochs": ft.get("epochs_run"),
        "systems": [{k: s.get(k) for k in ("name", "title", "baseline", *SHOWN[recipe], "ci")} for s in
                    report["systems"]],
        "target": {"metric": metric, "baseline": base, "verdict": compare(model["ci"][metric], baseline["ci"][metric])},
    }  # fmt: skip


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
                     f"{r['n']} test items; pretraining {r['pretrain_steps']} steps, SFT {r['sft_steps']} steps "
                     f"({r['sft_epochs']} epochs)")  # fmt: skip
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=["summarize-zh", "translate"], choices=sorted(TARGETS))
    ap.add_argument("--budgets", nargs="+", default=["15m"])
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-apps-seq"))
    ap.add_argument("--quick", action="store_true", help="budget 2m and 100 test items: a smoke run")
    ap.add_argument("--record", nargs="*", default=[], metavar="RUN_DIR=BUDGET=WALL_S")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
