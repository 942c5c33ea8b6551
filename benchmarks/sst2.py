"""Fine-tune MiniLM-L6 on SST-2 (sentence-level, Kim 2014 splits: 6,920 / 872 / 1,821) on CPU.

Three rows on the same split, in one run:

- TF-IDF + logistic regression (`llmchain.eval.baselines`, 1-2-grams), the classical baseline;
- `llmchain finetune classify` (the shared training loop: length-bucketed batches, bf16 autocast,
  fused AdamW with the clipping folded in, AdamW on the word-embedding rows of training tokens only —
  the other rows' update is exactly their weight decay, applied lazily; `--all-rows` turns that off),
  the epoch chosen on dev by macro-F1, then scored once on test;
- the same fine-tune through Hugging Face `Trainer` with the same settings (model init, epochs, batch
  size, LR, warmup, weight decay, cosine schedule, grad clip 1.0, fused AdamW, SDPA attention, bf16,
  eval + checkpoint each epoch, best epoch on dev), optionally also with its `group_by_length`
  sampler (`--hf-grouped`).

Wall time counts everything a user waits for: loading, tokenizing, training, per-epoch evals and
checkpoints, scoring test. Targets: ≥ 0.875 test accuracy within 10 minutes on the 2-core CPU, and
≥ 1.3× faster than `Trainer` for the same epochs.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/sst2.py --hf-grouped # the full run
    .venv/bin/python benchmarks/sst2.py --limit 500 --epochs 1 --skip-hf             # a quick try
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLMCHAIN_SHARED_DATA", REPO.parent / "shared" / "data")) / "sst2"


def read_split(name: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    with open(SST2 / f"{name}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = rows[:limit] if limit else rows
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def choose_threads(requested: str) -> int:
    """auto: all cores on an idle machine, 1 when other jobs keep the cores busy (OpenMP threads that
    share a core with another process stall each other at every barrier: several times slower)."""
    if requested != "auto":
        return int(requested)
    cores = os.cpu_count() or 1
    return cores if os.getloadavg()[0] < 0.5 * cores else 1


def tfidf_row() -> dict:
    from llmchain.eval.baselines import fit_text_classifiers

    t = time.perf_counter()
    tr, dev, test = read_split("train"), read_split("dev"), read_split("test")
    pipe = fit_text_classifiers(tr[0], [str(y) for y in tr[1]])["tfidf_logreg"]
    acc = {name: sum(p == str(y) for p, y in zip(pipe.predict(x), ys, strict=True)) / len(ys)
           for name, (x, ys) in (("dev", dev), ("test", test))}  # fmt: skip
    return {"method": "TF-IDF + logistic regression", "dev": acc["dev"], "test": acc["test"],
            "minutes": (time.perf_counter() - t) / 60, "epoch": None}  # fmt: skip


def ours_row(args, work: Path, train_file: Path) -> dict:
    from llmchain.config import ClassifyConfig
    from llmchain.train.classify import finetune_classifier
    from llmchain.train.distributed import teardown_runtime

    t = time.perf_counter()
    cfg = ClassifyConfig(
        model="minilm", train=str(train_file), val=str(SST2 / "dev.tsv"), test=str(SST2 / "test.tsv"),
        out=str(work / "ours"), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, precision=args.precision, seed=args.seed, patience=0, log_every=50,
        threads=args.threads, embedding_rows="all" if args.all_rows else "used",
    )  # fmt: skip
    s = finetune_classifier(cfg, quiet=not args.verbose)
    teardown_runtime()
    return {"method": "llmchain finetune classify" + (" (all embedding rows)" if args.all_rows else ""), "dev": s["best_val"]["accuracy"], "test": s["test"]["accuracy"],
            "minutes": (time.perf_counter() - t) / 60, "epoch": s["best_epoch"],
            "train_minutes": s["train_s"] / 60}  # fmt: skip


def hf_row(args, work: Path, grouped: bool) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from llmchain.train.classify import minilm_dir

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    d = minilm_dir()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(d, num_labels=2, local_files_only=True,
                                                               attn_implementation="sdpa")

    class Rows(torch.utils.data.Dataset):
        def __init__(self, split: str, limit: int | None = None):
            texts, labels = read_split(split, limit)
            self.enc = tok(texts, truncation=True, max_length=args.max_length)
            self.labels = labels

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                    "labels": self.labels[i]}  # fmt: skip

    train, dev, test = Rows("train", args.limit), Rows("dev"), Rows("test")

    def accuracy(p) -> dict:
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    targs = TrainingArguments(
        output_dir=str(work / ("hf_grouped" if grouped else "hf")), num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128, learning_rate=args.lr,
        weight_decay=0.01, max_grad_norm=1.0, optim="adamw_torch_fused", warmup_steps=0.06, lr_scheduler_type="cosine", bf16=args.precision == "bf16",
        use_cpu=True, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy", save_total_limit=1, report_to="none", seed=args.seed,
        logging_strategy="epoch", disable_tqdm=not args.verbose, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)  # fmt: skip
    trainer.train()
    dev_acc = trainer.evaluate(dev)["eval_accuracy"]
    test_acc = trainer.evaluate(test)["eval_accuracy"]
    best = trainer.state.best_model_checkpoint
    epoch = next((h["epoch"] for h in trainer.state.log_history
                  if "eval_accuracy" in h and best and best.endswith(f"-{h['step']}")), None)  # fmt: skip
    name = "HF Trainer" + (" (group_by_length)" if grouped else "")
    return {"method": name, "dev": dev_acc, "test": test_acc, "minutes": (time.perf_counter() - t) / 60,
            "epoch": epoch}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="auto",
                    help="torch CPU threads for both fine-tunes; auto: all cores when the machine is idle, else 1")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training sentences")
    ap.add_argument("--all-rows", action="store_true",
                    help="ours updates the whole word-embedding table every step (no TrainRowsEmbedding)")
    ap.add_argument("--skip-hf", action="store_true", help="skip the HF Trainer row")
    ap.add_argument("--hf-grouped", action="store_true", help="also run Trainer with group_by_length")
    ap.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.threads = choose_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work = args.work or Path(tempfile.mkdtemp(prefix="llmchain-sst2-"))
    work.mkdir(parents=True, exist_ok=True)
    train_file = SST2 / "train.tsv"
    if args.limit:
        train_file = work / "train-limit.tsv"
        lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
        train_file.write_text("\n".join(lines[: args.limit + 1]) + "\n", encoding="utf-8")
    shutil.rmtree(work / "ours", ignore_errors=True)
    load = os.getloadavg()[0]
    rows = [tfidf_row()]
    print(f"{rows[-1]['method']}: test {rows[-1]['test']:.4f}", flush=True)
    rows.append(ours_row(args, work, train_file))
    print(f"{rows[-1]['method']}: test {rows[-1]['test']:.4f} in {rows[-1]['minutes']:.1f} min", flush=True)
    if not args.skip_hf:
        for grouped in (False, True) if args.hf_grouped else (False,):
            rows.append(hf_row(args, work, grouped))
            print(f"{rows[-1]['method']}: test {rows[-1]['test']:.4f} in {rows[-1]['minutes']:.1f} min", flush=True)
    ours = rows[1]["minutes"]
    print(f"\nSST-2 (train {args.limit or 6920} / dev 872 / test 1,821), MiniLM-L6 (all-MiniLM-L6-v2), "
          f"{args.epochs} epochs, batch {args.batch_size}, LR {args.lr:g}, {args.precision}, "
          f"{args.threads} of {os.cpu_count()} CPU threads, load average at start {load:.1f}")  # fmt: skip
    print("| method | best epoch (dev) | dev acc | test acc | wall min | time vs ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = "—" if r is rows[0] else f"{r['minutes'] / ours:.2f}×"
        ep = "—" if r["epoch"] is None else f"{r['epoch']:g}"
        print(f"| {r['method']} | {ep} | {r['dev']:.4f} | {r['test']:.4f} | {r['minutes']:.1f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "load_average_at_start": load}, indent=2) + "\n")  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
