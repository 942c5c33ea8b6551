"""`llmchain explain classify|lm|faithfulness`: token attributions as HTML heatmaps and JSON, and how
faithful they are."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llmchain.errors import UserError


def _texts(texts: list[str] | None, file: Path | None) -> list[str]:
    out = list(texts or [])
    if file is not None:
        if not file.is_file():
            raise UserError(f"--file {file}: file not found")
        out += [ln for ln in file.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if not out:
        raise UserError("give a text to explain (an argument or --file FILE, one text a line)")
    for i, t in enumerate(out):
        if not t.strip():
            raise UserError(f"text {i + 1} is empty; nothing to explain")
    return out


def _load_classifier(model: str):
    from transformers.utils import logging as hf_logging

    from llmchain.model.classifier import load_classifier

    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar would precede any one-line error
    return load_classifier(model)


def _write(out: Path, title: str, sections: list[str], data: list[dict], kind: str, model: str,
           config: dict) -> None:  # fmt: skip
    """OUT/explain.html (every text), OUT/texts/NNN.html (one page per text), OUT/explanations.json."""
    from llmchain.artifacts import atomic_dir, write_manifest
    from llmchain.explain.html import page

    with atomic_dir(out) as tmp:
        (tmp / "explain.html").write_text(page(title, sections), encoding="utf-8")
        (tmp / "texts").mkdir()
        for i, section in enumerate(sections, 1):
            (tmp / "texts" / f"{i:03d}.html").write_text(page(f"{title} ({i})", [section]), encoding="utf-8")
        (tmp / "explanations.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        write_manifest(tmp, kind, inputs={"model": model}, config=config, counts={"texts": len(data)})


def classify(
    texts: list[str] = typer.Argument(None, help="Text(s) to explain."),
    model: str = typer.Option(..., "--model", help="A classifier dir (llmchain finetune classify → RUN/best; "
                              "ours or an HF encoder)."),
    file: Path = typer.Option(None, "--file", help="More texts, one a line."),
    label: str = typer.Option(None, help="Explain this label (default: the predicted one)."),
    methods: str = typer.Option("ig,occlusion", help="Comma-separated: ig, occlusion, random."),
    steps: int = typer.Option(50, min=2, help="IG steps to start with (doubled until the convergence delta "
                              "is within 1 % of the change, up to 800)."),
    baseline_train: Path = typer.Option(None, help="A labelled training file: fit the TF-IDF+LR baseline on it "
                                        "and show its n-gram weights for the same texts."),
    faithfulness: bool = typer.Option(False, help="Also measure comprehensiveness and sufficiency per text."),
    out: Path = typer.Option(Path("explain-out"), help="Output dir: explain.html, texts/NNN.html, explanations.json, manifest."),
) -> None:
    """Token attributions of a classifier's prediction: integrated gradients (Captum) and occlusion."""
    from llmchain.explain.classify import baseline_word_weights, explain_text
    from llmchain.explain.html import classifier_section
    items = _texts(texts, file)
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    clf = _load_classifier(model)
    pipe = None
    if baseline_train is not None:
        from llmchain.data.tables import read_labelled
        from llmchain.eval.baselines import fit_text_classifiers

        data = read_labelled(baseline_train)
        pipe = fit_text_classifiers(data.texts, data.labels)["tfidf_logreg"]
    sections, records = [], []
    for text in items:
        ex = explain_text(clf, text, label=label, methods=names, n_steps=steps, measure=faithfulness)
        weights = baseline_word_weights(pipe, text, ex.label) if pipe is not None else None
        sections.append(classifier_section(ex, weights))
        rec = ex.to_json()
        if weights is not None:
            rec["baseline_tfidf_lr"] = [{"ngram": w, "weight": round(v, 6)} for w, v in weights]
        records.append(rec)
        note = f"  (truncated: {len(ex.tokens.ids)} of {ex.tokens.truncated_from} tokens)" if ex.tokens.truncated_from else ""
        delta = f", IG delta {ex.ig_delta:.1e} after {ex.ig_steps} steps" if ex.ig_delta is not None else ""
        typer.echo(f"{ex.label} (p={ex.prob:.3f}{delta}){note}: {text[:60]}")
    _write(out, f"explanations: {Path(model).name}", sections, records, "explanations", model,
           {"methods": list(names), "label": label, "steps": steps})  # fmt: skip
    typer.echo(f"→ {out}/explain.html, {out}/explanations.json")


def lm(
    texts: list[str] = typer.Argument(None, help="Text(s): scored for surprisal, or prompts with --attribute."),
    model: str = typer.Option(..., "--model", help="A language model dir (ours or a local HF Llama-family dir)."),
    file: Path = typer.Option(None, "--file", help="More texts, one a line."),
    attribute: bool = typer.Option(False, help="Generate a greedy continuation and attribute it to the prompt's "
                                   "tokens (IG) instead of surprisal."),
    max_new_tokens: int = typer.Option(20, min=1, help="Continuation length with --attribute."),
    steps: int = typer.Option(32, min=2, help="IG steps with --attribute."),
    out: Path = typer.Option(Path("explain-out"), help="Output dir: explain.html, texts/NNN.html, explanations.json, manifest."),
) -> None:
    """Per-token surprisal (bits) of a text, or attribution of a generated continuation to the prompt."""
    from llmchain.explain.html import lm_section
    from llmchain.explain.lm import attribute_continuation, surprisal
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    items = _texts(texts, file)
    tok = load_tokenizer(model)
    net = load_model(model)
    sections, records = [], []
    for text in items:
        ex = attribute_continuation(net, tok, text, max_new_tokens, steps) if attribute else surprisal(net, tok, text)
        sections.append(lm_section(ex))
        records.append(ex.to_json())
        note = f"  (truncated from {ex.truncated_from} tokens)" if ex.truncated_from else ""
        if attribute:
            typer.echo(f"{text[:40]!r} → {ex.continuation!r} (IG delta {ex.ig_delta:.1e}){note}")
        else:
            bits = [b for b in ex.scores["surprisal_bits"] if b is not None]
            mean = sum(bits) / len(bits) if bits else float("nan")
            typer.echo(f"{mean:.2f} bits/token over {len(ex.ids)} tokens{note}: {text[:60]}")
    _write(out, f"language model: {Path(model).name}", sections, records, "explanations", model,
           {"attribute": attribute, "max_new_tokens": max_new_tokens, "steps": steps})  # fmt: skip
    typer.echo(f"→ {out}/explain.html, {out}/explanations.json")


def faithfulness(
    data: Path = typer.Argument(..., help="A labelled CSV/TSV/JSONL file (its texts are explained)."),
    model: str = typer.Option(..., "--model", help="A classifier dir."),
    limit: int = typer.Option(200, min=1, help="Explain a seeded random sample of this many texts."),
    steps: int = typer.Option(50, min=2, help="IG steps to start with."),
    seed: int = typer.Option(0),
    text_column: str = typer.Option(None, help="Default: text, sentence, review, content, ..."),
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON too."),
) -> None:
    """Comprehensiveness and sufficiency (ERASER) of IG and occlusion against random, over a data set."""
    from llmchain.commands.run import rich_console
    from llmchain.data.tables import read_labelled
    from llmchain.explain.faithfulness import measure_faithfulness
    texts = read_labelled(data, text_column=text_column).texts
    clf = _load_classifier(model)
    res = measure_faithfulness(clf, texts, n_steps=steps, seed=seed, limit=limit)
    from rich.table import Table

    table = Table(title=f"faithfulness on {res['texts']} texts of {data.name} ({res['seconds']} s)", title_justify="left")
    for col in ("method", "comprehensiveness ↑", "sufficiency ↓"):
        table.add_column(col)
    for m, v in res["mean"].items():
        table.add_row(m, f"{v['comprehensiveness']:.4f}", f"{v['sufficiency']:.4f}")
    rich_console().print(table)
    b = res.get("ig_beats_random")
    if b:
        typer.echo(f"IG beats random on {b['comprehensiveness']:.0%} of texts (comprehensiveness), "
                   f"{b['sufficiency']:.0%} (sufficiency); IG convergence delta median {res['ig_delta_median']:.1e} "
                   f"({res['ig_delta_relative_median']:.1%} of the change)")  # fmt: skip
    if json_out:
        from llmchain.artifacts import atomic_write_json

        atomic_write_json(json_out, {"data": str(data), "model": model, **res})
