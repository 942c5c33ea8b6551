"""Benchmark: the classification applications (recipes moderation-zh, sentiment-zh, sentiment, topic) on real data,
MiniLM and our own decoder each beside TF-IDF + LR and Naive Bayes, with 95 % bootstrap intervals.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/apps_classify.py [--quick]
        [--apps moderation-zh,sentiment-zh,sentiment,topic-ag,topic-trec] [--budgets 15m] [--runs-dir DIR]

Each app is a full `llmchain run` of its built-in recipe with `--set budget=B` (its training stages
get share × B of wall time), into DIR/APP-B/ (a re-run reuses what is up to date there: delete DIR
to measure from scratch). Several budgets give a curve: score against minutes of training.
- moderation-zh: COLD test (5,323 comments); macro-F1 against TF-IDF + LR (target: not below it) and
  the gap to COLD's authors' classifier (82.39 macro-F1, 82.75 % accuracy), macro-F1 per topic;
- sentiment-zh: waimai_10k cut 70/10/20 by the recipe's split stages (test use only: no licence);
  accuracy against TF-IDF + LR on characters (target: not below it);
- sentiment: SST-2 (English) train / dev / test as shipped;
- topic-ag: AG News (the 7,600-row official test split cut 70/10/20); topic-trec: TREC coarse labels
  (its train file cut 90/10 for train/val, its own test file).
"Better"/"worse" only when the 95 % intervals do not overlap. Prints a table; writes the raw rows to
benchmarks/results/apps_classify.json (--out). --quick: budget 3m, moderation-zh and sentiment-zh.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from llmchain.config import parse_duration
from llmchain.eval.bootstrap import compare
from llmchain.recipe import run_recipe

DATA = Path(os.environ.get("LLMCHAIN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results"
COLD_AUTHORS = {"accuracy": 0.8275, "macro_f1": 0.8239}
SPLITS = ("split_train", "split_val", "split_test")


def app_settings(app: str) -> tuple[str, list[str], list[str], str, dict[str, str]]:
    """(recipe, --input items, --set items, target metric, environment) of one benchmarked app."""
    if app == "moderation-zh":
        return "moderation-zh", [], [], "macro_f1", {"LLMCHAIN_DATA": str(DATA)}
    if app == "sentiment":
        return "sentiment", [], [], "accuracy", {"LLMCHAIN_DATA": str(DATA)}
    if app == "sentiment-zh":
        return "sentiment-zh", [], [], "accuracy", {"SENTIMENT_ZH_DATA": str(DATA / "waimai_10k_zh/waimai_10k.csv")}
    if app == "topic-ag":
        return "topic", [], [], "accuracy", {"LLMCHAIN_DATA": str(DATA)}
    if app == "topic-trec":
        trec = DATA / "trec"
        inputs = [f"{s}.{role}={trec / name}" for s in SPLITS for role, name in
                  (("data", "train.tsv"), ("test", "test.tsv"))]  # fmt: skip
        sets = [f"{s}.{k}={v}" for s in SPLITS for k, v in
                (("header", "null"), ("text_column", "text"), ("label_column", "coarse_label"))]  # fmt: skip
        return "topic", inputs, sets, "accuracy", {"LLMCHAIN_DATA": str(DATA)}
    raise SystemExit(f"unknown app {app!r}")


def run_app(app: str, budget: str, runs_dir: Path) -> list[dict]:
    recipe, inputs, sets, target, env = app_settings(app)
    os.environ.update(env)
    t0 = time.perf_counter()
    runner, plan = run_recipe(recipe, runs_dir=runs_dir / f"{app}-{budget}", inputs=inputs,
                              overrides=[f"budget={budget}", *sets], log=lambda m: None)  # fmt: skip
    wall = time.perf_counter() - t0
    stage_s = {s.stage.name: round(s.seconds, 1) for s in plan if s.run}
    rows = []
    for stage, model in (("eval", "MiniLM"), ("eval_decoder", "our decoder")):
        report = json.loads((runner.run_dir / stage / "report.json").read_text())
        for s in report["systems"]:
            if s["baseline"] and stage == "eval_decoder":
                continue  # the same baselines as in `eval`
            rows.append({"app": app, "budget": budget, "system": model if not s["baseline"] else s["title"],
                         "name": s["name"], "n": report["n"], "n_train": report["n_train"], "target": target,
                         **{m: s[m] for m in report["columns"]}, "ci": s["ci"]})  # fmt: skip
    best = next(r for r in rows if r["name"] == "tfidf_logreg")
    for r in rows:
        r["vs_tfidf"] = compare(r["ci"].get(target), best["ci"].get(target)) if r["name"] == "model" else ""
        r["wall_s"], r["stage_s"], r["stages_run"] = round(wall, 1), stage_s, len(stage_s)
    return rows


def fmt(r: dict, m: str) -> str:
    lo, hi = r["ci"].get(m, (None, None))
    return f"{r[m]:.4f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{r[m]:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="budget 3m; moderation-zh and sentiment-zh only")
    ap.add_argument("--apps", default=None, help="comma-separated: moderation-zh,sentiment-zh,sentiment,topic-ag,topic-trec")
    ap.add_argument("--budgets", default=None, help="comma-separated recipe budgets, e.g. 5m,10m,15m (default 15m)")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/llmchain-apps-classify"))
    ap.add_argument("--out", type=Path, default=RESULTS / "apps_classify.json")
    args = ap.parse_args()
    apps = (args.apps or ("moderation-zh,sentiment-zh" if args.quick else
                          "moderation-zh,sentiment-zh,sentiment,topic-ag,topic-trec")).split(",")  # fmt: skip
    budgets = (args.budgets or ("3m" if args.quick else "15m")).split(",")
    for budget in budgets:
        parse_duration(budget)  # a typo fails here, not after an hour
    rows = []
    for app in apps:
        for budget in budgets:
            rows += run_app(app, budget, args.runs_dir)
    print("| app | budget | system | accuracy [95 % CI] | macro-F1 [95 % CI] | vs TF-IDF+LR | wall s (stages run) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['app']} (n={r['n']}) | {r['budget']} | {r['system']} | {fmt(r, 'accuracy')} | "
              f"{fmt(r, 'macro_f1')} | {r['vs_tfidf']} | {r['wall_s']} ({r['stages_run']}) |")
    groups = [r for r in rows if any("@" in k for k in r)]
    if groups:
        print("\nmoderation-zh macro-F1 per topic:")
        for r in groups:
            per = ", ".join(f"{k.split('@')[1]} {fmt(r, k)}" for k in r if "@" in k)
            print(f"  {r['budget']} {r['system']}: {per}")
    for app, budget in dict.fromkeys((r["app"], r["budget"]) for r in rows):
        minilm, ours = (next(r for r in rows if (r["app"], r["budget"], r["system"]) == (app, budget, s))
                        for s in ("MiniLM", "our decoder"))  # fmt: skip
        m = minilm["target"]
        verdict = compare(minilm["ci"].get(m), ours["ci"].get(m))
        print(f"{app} {budget}: MiniLM vs our decoder on {m}: {minilm[m]:.4f} vs {ours[m]:.4f} → MiniLM "
              f"{ {'better': 'wins', 'worse': 'loses', 'overlap': 'ties (intervals overlap)'}[verdict]}")
    for r in rows:
        if r["app"] == "moderation-zh" and r["name"] in ("model", "tfidf_logreg"):
            print(f"moderation-zh {r['budget']} {r['system']}: macro-F1 {100 * r['macro_f1']:.2f} vs COLD's "
                  f"authors' {100 * COLD_AUTHORS['macro_f1']:.2f} (gap {100 * (r['macro_f1'] - 0.8239):+.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else []
    keep = [r for r in old if (r["app"], r["budget"]) not in {(r2["app"], r2["budget"]) for r2 in rows}]
    args.out.write_text(json.dumps(keep + rows, indent=1, ensure_ascii=False))
    print(f"raw rows: {args.out}")


if __name__ == "__main__":
    main()
