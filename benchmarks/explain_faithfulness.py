"""Benchmark: how faithful are our token attributions? IG and occlusion against random, on SST-2 dev
and on Chinese reviews (waimai_10k), for MiniLM fine-tuned briefly on each.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/explain_faithfulness.py [--steps 300] [--texts 100]

For each set: `llmchain finetune classify` of the bundled MiniLM-L6 for `--steps` optimizer steps
(batch 32, max length 64; SST-2: its train split; waimai: a seeded shuffle, 4000 rows to train, the
rest held out), then `measure_faithfulness` on `--texts` held-out texts (SST-2: dev), explaining the
predicted label: ERASER comprehensiveness (↑) and sufficiency (↓), AOPC over 1/5/10/20/50 %, for IG,
occlusion and random scores; the fraction of texts where IG beats random; IG's convergence delta.
Writes the results as JSON to --out (default benchmarks/results/explain_faithfulness.json).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--texts", type=int, default=100)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmchain-explain-bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_faithfulness.json"))
    args = ap.parse_args()

    import torch

    from llmchain.artifacts import atomic_write_json
    from llmchain.config import ClassifyConfig
    from llmchain.data.tables import read_labelled
    from llmchain.explain.faithfulness import measure_faithfulness
    from llmchain.model.classifier import load_classifier
    from llmchain.train.classify import finetune_classifier

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    # waimai is sorted by label: shuffle once (seeded), 4000 rows to train, the rest held out
    rows = (args.data / "waimai_10k_zh" / "waimai_10k.csv").read_text(encoding="utf-8").splitlines()
    body = rows[1:]
    random.Random(0).shuffle(body)
    (args.work / "waimai_train.csv").write_text("\n".join([rows[0], *body[:4000]]) + "\n", encoding="utf-8")
    (args.work / "waimai_heldout.csv").write_text("\n".join([rows[0], *body[4000:]]) + "\n", encoding="utf-8")
    sets = {
        "sst2": (args.data / "sst2" / "train.tsv", args.data / "sst2" / "dev.tsv"),
        "waimai_10k_zh": (args.work / "waimai_train.csv", args.work / "waimai_heldout.csv"),
    }
    results = {}
    for name, (train, held) in sets.items():
        run = args.work / name
        t0 = time.perf_counter()
        if not (run / "best" / "config.json").is_file():
            cfg = ClassifyConfig(model="minilm", train=str(train), val=str(held), out=str(run), max_steps=args.steps,
                                 max_length=64, batch_size=32, lr=5e-5, eval_batches=5, patience=0)  # fmt: skip
            finetune_classifier(cfg, quiet=True)
        train_s = time.perf_counter() - t0
        clf = load_classifier(run / "best")
        data = read_labelled(held)
        sample = random.Random(1).sample(range(len(data.texts)), min(1000, len(data.texts)))
        acc = sum(p["label"] == data.labels[i] for p, i in zip(clf.predict([data.texts[i] for i in sample]),
                                                                sample, strict=True)) / len(sample)  # fmt: skip
        res = measure_faithfulness(clf, data.texts, limit=args.texts, seed=0)
        results[name] = {"train_seconds": round(train_s, 1), "heldout_accuracy": round(acc, 4), **res}
        m = res["mean"]
        print(f"{name}: accuracy {acc:.3f} on {len(sample)} held-out texts; {res['texts']} texts explained in "
              f"{res['seconds']} s")
        for method in ("ig", "occlusion", "random"):
            print(f"  {method:10s} comprehensiveness {m[method]['comprehensiveness']:.4f}  "
                  f"sufficiency {m[method]['sufficiency']:.4f}")
        b = res["ig_beats_random"]
        print(f"  IG beats random on {b['comprehensiveness']:.0%} (comp.) / {b['sufficiency']:.0%} (suff.) of texts; "
              f"IG delta median {res['ig_delta_median']:.1e} ({res['ig_delta_relative_median']:.2%} of the change)")
    atomic_write_json(args.out, {"steps": args.steps, "texts": args.texts, "results": results})
    print(json.dumps({k: v["mean"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
