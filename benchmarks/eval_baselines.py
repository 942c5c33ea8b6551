"""Benchmark: the classical baselines of `llmchain eval` on the shared data sets, and the n-gram's speed.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/eval_baselines.py

Prints three tables:
1. byte-level Kneser-Ney n-gram on tinyshakespeare (first 90% of the characters → last 10%): bits
   per byte, fit and score seconds per order; and the same model fitted by NLTK's
   KneserNeyInterpolated (the usual Python reference) on a slice, to compare speed;
2. Naive Bayes and TF-IDF + logistic regression: accuracy / macro-F1 on SST-2, SST-5, TREC (coarse),
   AG News and waimai_10k (the last two split here: every 5th row is test);
3. the generation floor (lead of the prompt cut to the median reference length): BLEU, chrF,
   ROUGE-L on Multi30k en→de val, CSL abstract→title (dev) and Opinosis (sentences → summaries).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llmchain.data.tables import read_labelled  # noqa: E402
from llmchain.eval.baselines import TOKEN_RE, fit_text_classifiers, lead_baseline, ngram_bits_per_byte  # noqa: E402
from llmchain.eval.metrics import classification_metrics, generation_metrics  # noqa: E402


def _xy(path: Path, **kw) -> tuple[list[str], list[str]]:
    d = read_labelled(path, **kw)
    return d.texts, d.labels


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)))


def ngram_table(data: Path, nltk_chars: int) -> None:
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    rows = []
    for order in (2, 3, 4, 5, 6, 7):
        r = ngram_bits_per_byte([text[:cut]], [text[cut:]], order=order)
        rows.append([f"llmchain {order}-gram", f"{r['bits_per_byte']:.4f}", f"{r['fit_seconds']:.2f}",
                     f"{r['score_seconds']:.2f}", f"{r['train_bytes']:,}"])  # fmt: skip
    try:
        from nltk.lm import KneserNeyInterpolated
        from nltk.lm.preprocessing import padded_everygram_pipeline

        train, val = text[:nltk_chars], text[cut : cut + nltk_chars // 10]
        t0 = time.perf_counter()
        lm = KneserNeyInterpolated(3)
        grams, vocab = padded_everygram_pipeline(3, [list(train)])
        lm.fit(grams, vocab)
        t1 = time.perf_counter()
        bits = [-lm.logscore(val[i], list(val[max(0, i - 2) : i])) for i in range(len(val))]
        t2 = time.perf_counter()
        finite = [b for b in bits if b != float("inf")]
        rows.append([f"NLTK KneserNeyInterpolated(3), {nltk_chars:,}-char slice",
                     f"{sum(finite) / len(finite):.4f} ({len(bits) - len(finite)} inf)", f"{t1 - t0:.2f}",
                     f"{t2 - t1:.2f}", f"{len(train):,}"])  # fmt: skip
        ours = ngram_bits_per_byte([train], [val], order=3)
        rows.append(["llmchain 3-gram, same slice", f"{ours['bits_per_byte']:.4f}", f"{ours['fit_seconds']:.2f}",
                     f"{ours['score_seconds']:.2f}", f"{len(train):,}"])  # fmt: skip
    except ImportError:
        rows.append(["NLTK not installed", "", "", "", ""])
    _table("n-gram LM on tinyshakespeare val (bytes; interpolated modified Kneser-Ney)",
           ["model", "bits/byte", "fit s", "score s", "train bytes"], rows)  # fmt: skip


def _split_csv(path: Path, label_col: str | int, text_cols: list, header: bool) -> tuple[list, list, list, list]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if header:
        names, rows = rows[0], rows[1:]
        label_col = names.index(label_col)
        text_cols = [names.index(c) for c in text_cols]
    x = [" ".join(r[c] for c in text_cols) for r in rows]
    y = [r[label_col] for r in rows]
    test = set(range(0, len(rows), 5))
    return ([t for i, t in enumerate(x) if i not in test], [t for i, t in enumerate(y) if i not in test],
            [t for i, t in enumerate(x) if i in test], [t for i, t in enumerate(y) if i in test])  # fmt: skip


def classify_table(data: Path) -> None:
    sets = {
        "SST-2": lambda: (*_xy(data / "sst2" / "train.tsv"), *_xy(data / "sst2" / "test.tsv")),
        "SST-5": lambda: (*_xy(data / "sst5" / "train.tsv"), *_xy(data / "sst5" / "test.tsv")),
        "TREC-6": lambda: (*_xy(data / "trec" / "train.tsv", label_column="coarse_label"),
                           *_xy(data / "trec" / "test.tsv", label_column="coarse_label")),
        "AG News (split 4:1)": lambda: _split_csv(data / "ag_news" / "test.csv", 0, [1, 2], header=False),
        "waimai_10k (split 4:1)": lambda: _split_csv(data / "waimai_10k_zh" / "waimai_10k.csv", "label", ["review"],
                                                     header=True),
    }  # fmt: skip
    rows = []
    for name, load in sets.items():
        x, y, tx, ty = load()
        t0 = time.perf_counter()
        models = fit_text_classifiers(x, y)
        fit = time.perf_counter() - t0
        cells = [name, f"{len(x):,}/{len(tx):,}"]
        for pipe in models.values():
            m = classification_metrics(ty, [str(p) for p in pipe.predict(tx)], sorted(set(y) | set(ty)))
            cells += [f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}"]
        rows.append([*cells, f"{fit:.1f}"])
    _table("text classification baselines (test split)",
           ["data set", "train/test", "NB acc", "NB F1", "LR acc", "LR F1", "fit s (both)"], rows)  # fmt: skip


def generation_table(data: Path) -> None:
    rows = []
    en = (data / "multi30k" / "val.en").read_text(encoding="utf-8").splitlines()
    de = (data / "multi30k" / "val.de").read_text(encoding="utf-8").splitlines()
    csl = list(csv.reader(io.StringIO((data / "csl_zh_title_summarization" / "dev.tsv").read_text(encoding="utf-8")),
                          delimiter="\t", quoting=csv.QUOTE_NONE))[1:]  # fmt: skip
    opi = [json.loads(line) for line in (data / "opinosis" / "opinosis.jsonl").read_text(encoding="utf-8").splitlines()]
    sets = {
        "Multi30k en→de (val)": (en, [[r] for r in de]),
        "CSL abstract→title (dev)": ([r[0] for r in csl], [[r[1]] for r in csl]),
        "Opinosis sentences→summary": ([" ".join(o["sentences"]) for o in opi], [o["references"] for o in opi]),
    }
    for name, (prompts, refs) in sets.items():
        length = max(1, int(statistics.median(len(TOKEN_RE.findall(r[0])) for r in refs)))
        m = generation_metrics(lead_baseline(prompts, length), refs)
        rows.append([name, f"{len(prompts):,}", str(length), f"{m['bleu']:.2f}", f"{m['chrf']:.2f}",
                     f"{m['rouge1']:.2f}", f"{m['rougeL']:.2f}"])  # fmt: skip
    _table("generation floor: lead of the prompt, cut to the median reference length",
           ["data set", "n", "lead tokens", "BLEU", "chrF", "ROUGE-1", "ROUGE-L"], rows)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--nltk-chars", type=int, default=100_000, help="training slice for the NLTK comparison")
    args = ap.parse_args()
    ngram_table(args.data, args.nltk_chars)
    classify_table(args.data)
    generation_table(args.data)


if __name__ == "__main__":
    main()
