"""`llmchain eval classify`: a fine-tuned classifier beside Naive Bayes and TF-IDF + logistic regression.

All systems are scored on the same test file with the same metrics (accuracy, macro and per-class
precision/recall/F1, confusion matrix); the baselines are fitted on the train file. Without a
model, only the baselines run — still a useful floor before any fine-tuning.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from llmchain.data.tables import read_labelled
from llmchain.errors import UserError
from llmchain.eval.baselines import BASELINE_TITLES, choose_zh_mode, fit_text_classifiers
from llmchain.eval.bootstrap import RESAMPLES, classification_intervals, verdicts
from llmchain.eval.io import write_report
from llmchain.eval.metrics import classification_metrics

COLUMNS = ["accuracy", "macro_precision", "macro_recall", "macro_f1"]


def _model_predictions(model_dir: Path, texts: list[str], test_labels: list[str], batch_size: int) -> dict:
    from llmchain.model.classifier import load_classifier

    clf = load_classifier(model_dir)
    model_labels = [str(x) for x in clf.labels]
    unknown = sorted(set(test_labels) - set(model_labels))
    if unknown and len(unknown) == len(set(test_labels)):
        raise UserError(
            f"{model_dir}: the model's labels {model_labels} share none with the test file's "
            f"{sorted(set(test_labels))}; was it trained on another task?"
        )
    t0 = time.perf_counter()
    preds = clf.predict(texts, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {
        "labels": model_labels,
        "pred": [str(p["label"]) for p in preds],
        "seconds": seconds,
        "unknown_labels": unknown,
    }


def evaluate_classification(
    train: str | os.PathLike,
    test: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    zh: str = "auto",
    batch_size: int = 32,
    seed: int = 0,
    header: bool | None = None,
    resamples: int = RESAMPLES,
    group_column: str | None = None,
) -> dict[str, Any]:
    """Score the model (if any) and the classical baselines on `test`; returns the report dict.

    report["systems"] lists {name, title, baseline, accuracy, macro_*, per_class, confusion, labels,
    seconds, ci}; the first is the model when given. `ci` holds each metric's 95 % bootstrap interval over
    `resamples` resamples of the test items, the same resamples for every system (0: none). With
    `group_column` (e.g. COLD's topic), each system also has `macro_f1@GROUP` (macro-F1 within the test
    rows of that group, with its interval) for every group, shown as extra columns. Raises UserError/DataError for missing or malformed
    files, unknown columns, or a model whose labels do not fit the test set.
    """
    # strict: every test row counts in the metric, so a malformed one is an error, not a skipped row
    tr = read_labelled(train, text_column, label_column, strict=True, header=header)
    te = read_labelled(test, text_column, label_column, strict=True, header=header, group_column=group_column)
    train_x, train_y, test_x, test_y = tr.texts, tr.labels, te.texts, te.labels
    if len(set(train_y)) < 2:
        raise UserError(f"{train}: only one class ({train_y[0]}) in the labels; the baselines need at least 2")
    groups = sorted(set(te.groups)) if te.groups is not None else []
    if model_dir is not None and not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: no such model directory")
    labels = sorted(set(train_y) | set(test_y))
    systems: list[dict[str, Any]] = []
    warnings: list[str] = []

    def scored(pred: list[str], system_labels: list[str]) -> dict[str, Any]:
        # the same seed → the same resampled test sets for every system (a paired bootstrap)
        ci = classification_intervals(test_y, pred, system_labels, resamples=resamples, seed=seed)
        out = {**classification_metrics(test_y, pred, system_labels), "ci": ci}
        for g in groups:  # macro-F1 within each group: one class may be rare in a group, so this is noisier
            rows = [i for i, x in enumerate(te.groups or []) if x == g]
            gy, gp = [test_y[i] for i in rows], [pred[i] for i in rows]
            key = f"macro_f1@{g}"
            out[key] = classification_metrics(gy, gp, system_labels)["macro_f1"]
            ci[key] = classification_intervals(gy, gp, system_labels, resamples=resamples, seed=seed)["macro_f1"]
        return out

    if model_dir is not None:
        out = _model_predictions(Path(model_dir), test_x, test_y, batch_size)
        if out["unknown_labels"]:
            warnings.append(f"test labels the model does not know (always wrong): {out['unknown_labels']}")
        all_labels = sorted(set(labels) | set(out["pred"]))
        systems.append({"name": "model", "title": f"model ({Path(model_dir).name})", "baseline": False,
                        **scored(out["pred"], all_labels), "seconds": out["seconds"]})
    mode = choose_zh_mode(train_x, zh)
    t0 = time.perf_counter()
    fitted = fit_text_classifiers(train_x, train_y, zh=mode, seed=seed)
    fit_seconds = time.perf_counter() - t0
    for name, pipe in fitted.items():
        t1 = time.perf_counter()
        pred = [str(p) for p in pipe.predict(test_x)]
        systems.append({"name": name, "title": BASELINE_TITLES[name], "baseline": True, **scored(pred, labels),
                        "seconds": time.perf_counter() - t1, "fit_seconds": fit_seconds})
    majority = max(labels, key=train_y.count)
    systems.append({"name": "majority", "title": f"majority class ({majority!r})", "baseline": True,
                    **scored([majority] * len(test_y), labels), "seconds": 0.0})
    return {
        "kind": "eval-classify",
        "task": "classification",
        "model": str(Path(model_dir).resolve()) if model_dir is not None else None,
        "train": str(Path(train).resolve()),
        "test": str(Path(test).resolve()),
        "n": len(test_y),
        "n_train": len(train_y),
        "labels": labels,
        "columns": COLUMNS + [f"macro_f1@{g}" for g in groups],
        "groups": {g: (te.groups or []).count(g) for g in groups},
        "primary": "accuracy",
        "higher_is_better": True,
        "config": {"zh": mode, "text_column": text_column, "label_column": label_column,
                   "group_column": group_column, "seed": seed,
                   "bootstrap_resamples": resamples},
        "systems": systems,
        "notes": verdicts(systems, "accuracy") + verdicts(systems, "macro_f1"),
        "warnings": warnings,
    }


def run_classify_eval(out_dir: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """`evaluate_classification(**kwargs)` + write OUT/report.json, confusion-matrix and bar PNGs."""
    from llmchain.eval import plots

    report = evaluate_classification(**kwargs)

    def draw(tmp: Path) -> list[str]:
        names = [plots.bars(tmp / "accuracy.png", report["systems"], "accuracy", "accuracy (higher is better)")]
        first = report["systems"][0]
        names.append(plots.confusion(tmp / "confusion.png", first["confusion"], first["labels"], first["title"]))
        return names

    inputs = {"model": report["model"], "train": report["train"], "test": report["test"]}
    return report, write_report(out_dir, report, inputs, draw)
