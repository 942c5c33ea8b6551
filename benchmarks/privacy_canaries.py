"""Benchmark: what the quickstart-size model memorises of canaries planted 1, 10 and 100 times, with and
without near-dedup in the data stage.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/privacy_canaries.py

Runs the built-in `privacy` recipe (tinyshakespeare by paragraph, 4 canaries at each of 1/10/100 copies
+ 4 never planted, 6-digit secrets so |R| = 10^6, the quickstart's 4.2M-parameter Llama) once per arm:

- `none`: data steps clean, length (every copy reaches training);
- `near_dedup`: clean, length, near_dedup (MinHash LSH; identical copies collapse to one).

Training is a fixed number of steps (default 300) in fp32, not the recipe's wall-time budget and timed
choice of precision, so both arms see the same tokens with the same arithmetic however busy the machine is. Prints one table per copy count and arm: copies
kept after dedup and in the train split, mean / max exposure (bits, skew-normal extrapolation), how many
canaries greedy decoding extracts, and the membership-inference AUC of each model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ARMS = {"none": "[clean, length]", "near_dedup": "[clean, length, near_dedup]"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs/bench-privacy")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=1000, help="candidates per canary for the skew-normal fit")
    ap.add_argument("--arms", default=",".join(ARMS))
    args = ap.parse_args()

    from llmchain.recipe import run_recipe

    results = {}
    for arm in args.arms.split(","):
        t0 = time.time()
        overrides = [
            f"data.steps={ARMS[arm]}",
            "pretrain.max_time=null",
            "pretrain.precision=fp32",
            f"pretrain.max_steps={args.max_steps}",
            f"privacy_audit.samples={args.samples}",
        ]
        runner, _ = run_recipe(
            "privacy", runs_dir=Path(args.runs_dir) / arm, overrides=overrides, log=lambda s: None
        )
        report = json.loads((runner.run_dir / "privacy_audit" / "report.json").read_text(encoding="utf-8"))
        metrics = [
            json.loads(x) for x in (runner.run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
        ]
        val = [m for m in metrics if m.get("split") == "val"]
        results[arm] = {
            "report": report,
            "seconds": round(time.time() - t0, 1),
            "val_loss": val[-1]["loss"] if val else None,
        }
        print(f"{arm}: {results[arm]['seconds']} s, final val loss {results[arm]['val_loss']}", flush=True)

    cols = [
        "copies planted",
        "copies kept (mean)",
        "copies in train (mean)",
        "exposure mean (bits)",
        "exposure max (bits)",
        "extracted",
    ]
    print("\n| arm | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for arm, r in results.items():
        for g in r["report"]["systems"]:
            cells = [f"{g[c]:.2f}" if isinstance(g[c], float) else str(g[c]) for c in cols]
            cells[-1] = f"{g['extracted']}/{g['canaries']}"
            print(f"| {arm} | " + " | ".join(cells) + " |")
    print()
    for arm, r in results.items():
        mi = r["report"]["membership_inference"]
        auc = f"{mi['auc']:.3f}" if mi.get("auc") is not None else f"n/a ({mi.get('reason')})"
        print(f"{arm}: membership-inference AUC {auc}; val loss {r['val_loss']}; {r['seconds']} s end to end")
    out = Path(args.runs_dir) / "results.json"
    out.write_text(
        json.dumps(
            {
                a: {
                    "seconds": r["seconds"],
                    "val_loss": r["val_loss"],
                    "groups": r["report"]["systems"],
                    "membership_inference": r["report"]["membership_inference"],
                }
                for a, r in results.items()
            },
            indent=2,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
