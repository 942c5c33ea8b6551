"""The `generate` recipe measured: bits per byte with 95 % bootstrap intervals on tinyshakespeare and
zh_classical, beside byte-level 3- and 5-gram Kneser-Ney baselines, and the recipe's wall time.

Two variants at the same pretraining CPU time:
- `separate` (the recipe as shipped): an English and a Chinese model, each with its own BPE vocabulary
  (1024 / 2048) and 35 % of the budget;
- `bilingual`: one model on both corpora with one 3072-token vocabulary and 70 % of the budget, scored on
  the same two val splits (the same text: the last 10 % of every document).
Both report every system's bits/byte and interval from `eval lm`, so the rows compare directly.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/apps_generate.py --variant separate
    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/apps_generate.py --variant bilingual
    .venv/bin/python benchmarks/apps_generate.py --budget 1m --work /tmp/gen-try     # a quick try

Raw results: benchmarks/results/apps_generate_VARIANT.json (each eval report's systems, stage times).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCHAIN_SHARED_DATA", REPO.parent / "shared" / "data"))
RECIPE = REPO / "src/llmchain/recipes/generate.yaml"


def bilingual_recipe(work: Path) -> Path:
    """The generate recipe with one tokenizer and one pretrain over both corpora; per-language packs."""
    both = work / "both"
    both.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LLMCHAIN_DATA", str(SHARED))
    for src in [
        REPO / "src/llmchain/recipes/corpus/tinyshakespeare.txt",
        *sorted((SHARED / "zh_classical").rglob("*.txt")),
    ]:
        link = both / src.name
        if not link.exists():
            link.symlink_to(src)
    r = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    st = r["stages"]
    r["name"] = "generate-bilingual"
    data_all = {
        "type": "data",
        "inputs": {"raw": str(both)},
        "config": {**st["data_zh"]["config"], "language": {"languages": ["en", "zh"]}},
    }
    tok = {
        "type": "tokenizer",
        "inputs": {"documents": "data_all"},
        "config": {**st["tokenizer_zh"]["config"], "vocab_size": 3072},
    }
    pretrain = {**st["pretrain_en"], "inputs": {"shards": "pack_all"}, "share": 0.7}
    stages = {"data_en": st["data_en"], "data_zh": st["data_zh"], "data_all": data_all, "tokenizer_all": tok}
    for lang in ("all", "en", "zh"):
        stages[f"pack_{lang}"] = {
            "type": "pack",
            "inputs": {"documents": f"data_{lang}", "tokenizer": "tokenizer_all"},
            "config": st["pack_en"]["config"],
        }
    stages["pretrain_all"] = pretrain
    for lang in ("en", "zh"):
        stages[f"eval_{lang}"] = {
            **st[f"eval_{lang}"],
            "inputs": {"model": "pretrain_all", "data": f"pack_{lang}"},
        }
    r["stages"] = stages
    path = work / "generate-bilingual.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["separate", "bilingual"], default="separate")
    ap.add_argument("--budget", default="15m", help="the recipe's budget (default: its own, 15m)")
    ap.add_argument("--work", type=Path, default=None, help="runs dir (default: a temp dir, removed)")
    ap.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/apps_generate_VARIANT.json"
    )
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch threads of the pretrains: N, all, or auto (all cores "
        "on an idle machine, 1 on a busy one: shakespeare.py's choose_threads)",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("LLMCHAIN_DATA", str(SHARED))
    from shakespeare import choose_threads

    from llmchain.recipe import run_recipe

    work = args.work or Path(tempfile.mkdtemp(prefix="apps-gen-"))
    recipe = RECIPE if args.variant == "separate" else bilingual_recipe(work)
    t0 = time.time()
    threads = choose_threads(args.threads)
    sets = [f"budget={args.budget}"] + [
        f"{name}.threads={threads}"
        for name in (("pretrain_en", "pretrain_zh") if args.variant == "separate" else ("pretrain_all",))
    ]
    runner, plan = run_recipe(str(recipe), runs_dir=work / "runs", overrides=sets, force=True)
    wall = time.time() - t0
    rows = {}
    for lang in ("en", "zh"):
        report = json.loads((runner.run_dir / f"eval_{lang}/report.json").read_text(encoding="utf-8"))
        rows[lang] = {
            "systems": [
                {k: s.get(k) for k in ("name", "title", "bits_per_byte", "ci", "loss", "tokens", "bytes")}
                for s in report["systems"]
            ],
            "notes": report["notes"],
        }
    steps = {}
    for s in plan:
        metrics = runner.run_dir / s.stage.name / "metrics.jsonl"
        if s.stage.type.name == "pretrain" and metrics.is_file():
            steps[s.stage.name] = max(
                json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x
            )
    result = {"variant": args.variant, "budget": args.budget, "threads": threads, "pretrain_steps": steps,
              "wall_seconds": round(wall, 1),
              "stage_seconds": {s.stage.name: round(s.seconds, 1) for s in plan if s.run},
              "results": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "load_at_start": os.getloadavg()[0]}}  # fmt: skip
    out = args.out or REPO / f"benchmarks/results/apps_generate_{args.variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\n{args.variant}, budget {args.budget}: {wall / 60:.1f} min wall\n")
    print("| corpus | system | bits/byte | 95 % interval |\n|---|---|---:|---|")
    for lang, r in rows.items():
        for s in r["systems"]:
            lo, hi = (s.get("ci") or {}).get("bits_per_byte") or (float("nan"),) * 2
            print(f"| {lang} | {s['title']} | {s['bits_per_byte']:.4f} | [{lo:.4f}, {hi:.4f}] |")
    print(f"\nraw results: {out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
