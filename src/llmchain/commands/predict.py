"""`llmchain predict`: classify texts with a fine-tuned classifier (the label and every label's score)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from llmchain.commands.finetune import _quiet_hf
from llmchain.errors import UserError


def predict(
    texts: list[str] = typer.Argument(None, help="Text(s) to classify."),
    model: str = typer.Option(..., "--model", help="Classifier dir (llmchain finetune classify → RUN/best)."),
    input: Path = typer.Option(None, "--input", "-i", help="CSV, TSV, JSONL, or .txt with one text per line."),
    output: Path = typer.Option(None, "--output", "-o", help="Write .csv or .jsonl (default: JSON lines on stdout)."),
    text_column: str = typer.Option(None, "--text-column", help="Name or 0-based index (default: text, ...)."),
    no_header: bool = typer.Option(False, "--no-header", help="CSV/TSV without a header row: columns by index "
                                   "(--text-column 1 --label-column 0). Default: sniffed."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="JSON lines for TEXT arguments too."),
) -> None:
    """Classify texts with a fine-tuned classifier: the label and every label's score."""
    from llmchain.model.classifier import load_classifier

    if not texts and input is None:
        raise UserError("give TEXT arguments or --input FILE")
    if texts and input is not None:
        raise UserError("give either TEXT arguments or --input FILE, not both")
    _quiet_hf()
    clf = load_classifier(model)
    if texts:
        preds = clf.predict(texts, batch_size=batch_size)
        for text, p in zip(texts, preds, strict=True):
            if as_json:
                typer.echo(json.dumps({"text": text, **p}, ensure_ascii=False))
            else:
                typer.echo(f"{p['label']}\t{p['scores'][p['label']]:.4f}\t{text}")
        return
    from llmchain.data.tables import read_texts

    items, rows = read_texts(input, text_column, header=False if no_header else None)
    preds = clf.predict(items, batch_size=batch_size)
    if output is None:
        for text, p in zip(items, preds, strict=True):
            sys.stdout.write(json.dumps({"text": text, **p}, ensure_ascii=False) + "\n")
        return
    write_predictions(output, items, rows, preds, clf.labels)
    counts: dict[str, int] = {}
    for p in preds:
        counts[p["label"]] = counts.get(p["label"], 0) + 1
    typer.echo(f"{len(preds):,} predictions → {output}  ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


def write_predictions(path: Path, texts: list[str], rows: list[dict], preds: list[dict], labels: list[str]) -> None:
    """Write the input rows plus the predicted label and scores: CSV/TSV (score_<label> columns) or JSONL
    (`scores` dict). The column is `label`, or `predicted_label` when the input has a `label` column."""
    import csv
    import io

    from llmchain.artifacts import atomic_write_text

    suffix = path.suffix.lower()
    # The input may carry its gold labels in a `label` column: keep them, name ours `predicted_label`.
    key = "predicted_label" if any("label" in row for row in rows[:1]) else "label"
    if suffix in (".jsonl", ".json", ".ndjson"):
        lines = [json.dumps({**row, key: p["label"], "scores": p["scores"]}, ensure_ascii=False)
                 for row, p in zip(rows, preds, strict=True)]  # fmt: skip
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return
    if suffix not in (".csv", ".tsv"):
        raise UserError(f"{path}: write predictions to .csv, .tsv or .jsonl")
    buf = io.StringIO()
    base = list(rows[0].keys()) if rows else ["text"]
    fields = base + [key] + [f"score_{name}" for name in labels]
    writer = csv.DictWriter(buf, fieldnames=fields, delimiter="\t" if suffix == ".tsv" else ",",
                            extrasaction="ignore", lineterminator="\n")  # fmt: skip
    writer.writeheader()
    for row, p in zip(rows, preds, strict=True):
        writer.writerow({**row, key: p["label"], **{f"score_{k}": f"{v:.6f}" for k, v in p["scores"].items()}})
    atomic_write_text(path, buf.getvalue())
