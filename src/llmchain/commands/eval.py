"""`llmchain eval lm|classify|generate`: thin — parse, call, print the systems × metrics table.

Each eval writes OUT/report.json (+ PNGs, manifest.json); by default OUT is RUN/eval/KIND for a run's
model, so `llmchain report RUN` finds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def print_report(report: dict[str, Any], out: Path, extra: str = "") -> None:
    """The systems × metrics table (model bold, baselines dim) and where the report went."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from llmchain.eval.cardtext import METRIC_NAMES, fmt_metric

    cols = report.get("columns", [])
    n = report.get("n")
    unit = "bytes" if report["kind"] == "eval-lm" else "examples"
    count = f"{n:,}" if isinstance(n, int) else "?"
    table = Table(title=f"{report.get('task', report['kind'])}: {count} {unit}", title_justify="left")
    table.add_column("system")
    for c in cols:
        table.add_column(METRIC_NAMES.get(c, c), justify="right")
    for s in report["systems"]:
        style = "dim" if s.get("baseline") else "bold"
        table.add_row(s.get("title", s["name"]), *[escape(fmt_metric(s, c, "\n")) for c in cols], style=style)
    console = Console()
    console.print(table)
    if any(s.get("ci") for s in report["systems"]):
        console.print("\\[low, high]: 95 % bootstrap interval (same resamples for every system); "
                      "overlapping intervals are not called better.")
    for note in report.get("notes", []) + report.get("warnings", []):
        console.print(f"note: {note}")
    if extra:
        console.print(extra)
    console.print(f"report: {out / 'report.json'}")


def lm(
    data: Path = typer.Option(..., "--data", "-d", help="Token-shards dir (val split) or a UTF-8 text file."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model dir (omit: baselines only)."),
    baseline: str = typer.Option("ngram", "--baseline", help="ngram (default) or none."),
    order: list[int] | None = typer.Option(None, "--order", help="n-gram order(s), repeatable (default 3 and 5)."),
    train_text: Path | None = typer.Option(
        None, "--train-text", help="Text the n-gram is fitted on (default: the shards' train split)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Windows per forward pass (default 8)."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Tokens per window (default: model context ≤ 1024)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Evaluate only the first N tokens."),
    stride: int | None = typer.Option(None, "--stride", help="Sliding windows: each scores its last N tokens, "
                                      "the rest of the window is context (default: non-overlapping)."),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda, mps."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default: RUN/eval/lm or ./eval/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with EvalLMConfig fields; flags win."),
) -> None:
    """Loss, perplexity and bits-per-byte of MODEL on DATA, beside Kneser-Ney n-gram models on bytes."""
    from llmchain.config import EvalLMConfig, load_config
    from llmchain.errors import UserError
    from llmchain.eval.io import default_out_dir
    from llmchain.eval.lm import run_lm_eval, summary_line

    if baseline not in ("ngram", "none"):
        raise UserError(f"--baseline {baseline!r}: choose ngram or none")
    cfg = load_config(EvalLMConfig, config, orders=order or None, batch_size=batch_size, seq_len=seq_len,
                      max_tokens=max_tokens, stride=stride, device=device)  # fmt: skip
    if model is None and baseline == "none":
        raise UserError("nothing to evaluate: give --model, or keep the n-gram baseline")
    out = out or default_out_dir(model, "lm")
    report, out = run_lm_eval(out, data=data, model_dir=model, orders=tuple(cfg.orders) if baseline == "ngram" else (),
                              train_text=train_text, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                              max_tokens=cfg.max_tokens, stride=cfg.stride, device=cfg.device)  # fmt: skip
    print_report(report, out, summary_line(report))


def classify(
    train: Path = typer.Option(..., "--train", help="Labelled train file (.tsv/.csv/.jsonl) for the baselines."),
    test: Path = typer.Option(..., "--test", help="Labelled test file, same format."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Classifier dir (omit: baselines only)."),
    text_column: str | None = typer.Option(None, "--text-column", help="Text column (default: text/sentence/...)."),
    label_column: str | None = typer.Option(None, "--label-column", help="Label column (default: label/...)."),
    no_header: bool = typer.Option(False, "--no-header", help="CSV/TSV without a header row: columns by index "
                                   "(--text-column 1 --label-column 0). Default: sniffed."),
    zh: str | None = typer.Option(None, "--zh", help="Chinese for the baselines: auto (chars), char, jieba."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Texts per model batch (default 32)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default: RUN/eval/classify or ./eval/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with EvalClassifyConfig fields; flags win."),
) -> None:
    """Accuracy, macro/per-class P/R/F1 and confusion of MODEL beside Naive Bayes and TF-IDF + LR."""
    from llmchain.config import EvalClassifyConfig, load_config
    from llmchain.eval.classify import run_classify_eval
    from llmchain.eval.io import default_out_dir

    cfg = load_config(EvalClassifyConfig, config, text_column=text_column, label_column=label_column, zh=zh,
                      batch_size=batch_size, header=False if no_header else None)  # fmt: skip
    out = out or default_out_dir(model, "classify")
    report, out = run_classify_eval(out, train=train, test=test, model_dir=model, text_column=cfg.text_column,
                                    label_column=cfg.label_column, zh=cfg.zh, batch_size=cfg.batch_size,
                                    seed=cfg.seed, header=cfg.header)  # fmt: skip
    print_report(report, out)


def generate(
    data: Path = typer.Option(..., "--data", "-d", help="Prompt/reference pairs: .jsonl/.json/.tsv/.csv, or a "
                                                        "text file of prompts with --references."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Causal model dir to generate with."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Score these outputs (one a line, or "
                                                                        ".jsonl 'prediction') instead of a model."),
    references: list[str] | None = typer.Option(None, "--references", help="Line-aligned reference file(s) for a "
                                                                            "plain-text --data; repeatable."),
    train: Path | None = typer.Option(None, "--train", help="Training pairs for the nearest-reference baseline."),
    prompt_field: str | None = typer.Option(None, "--prompt-field", help="Prompt column/field."),
    reference_field: str | None = typer.Option(None, "--reference-field", help="Reference column/field."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Tokens per output (default 64)."),
    temperature: float | None = typer.Option(None, "--temperature", help="0 = greedy (default)."),
    chat_template: bool | None = typer.Option(None, "--chat-template/--no-chat-template",
                                              help="Wrap prompts in the tokenizer's chat template (default: if any)."),
    stop: list[str] | None = typer.Option(None, "--stop", help="Cut outputs at this string; repeatable."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N examples."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default: RUN/eval/generate or ./eval/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with EvalGenerateConfig fields; flags win."),
) -> None:
    """BLEU, chrF, ROUGE-1/2/L and exact match of MODEL's outputs (or --predictions) beside copy baselines."""
    from llmchain.config import EvalGenerateConfig, load_config
    from llmchain.errors import UserError
    from llmchain.eval.generate import run_generate_eval
    from llmchain.eval.io import default_out_dir

    cfg = load_config(EvalGenerateConfig, config, prompt_field=prompt_field, reference_field=reference_field,
                      max_new_tokens=max_new_tokens, temperature=temperature, chat_template=chat_template,
                      stop=stop or None, limit=limit)  # fmt: skip
    if model is None and predictions is None:
        raise UserError("give --model (generate and score) or --predictions (score a file of outputs)")
    out = out or default_out_dir(model, "generate")
    gen = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "chat_template": cfg.chat_template,
           "stop": cfg.stop, "seed": cfg.seed, "device": cfg.device} if model is not None else {}  # fmt: skip
    report, out = run_generate_eval(out, data=data, model_dir=model, predictions=predictions, train=train,
                                    prompt_field=cfg.prompt_field, reference_field=cfg.reference_field,
                                    reference_files=references or None, limit=cfg.limit, samples=cfg.samples,
                                    **gen)  # fmt: skip
    print_report(report, out)


def retrieval(
    set_name: str | None = typer.Option(None, "--set", help="Built-in set: csl (Chinese) or self-instruct (English)."),
    index: Path | None = typer.Option(None, "--index", help="Your index (from `llmchain index`), with --queries."),
    queries: Path | None = typer.Option(None, "--queries", help="JSONL/CSV/TSV with `query` and `relevant` "
                                        "(a source name or a JSON list of them)."),
    k: list[int] | None = typer.Option(None, "--k", help="Cut-off(s) for recall@k and nDCG@k (default 1 5 10)."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N queries."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder for a built-in set's index (default minilm)."),
    data_dir: Path = typer.Option(Path("/work/shared/data"), "--data-dir", envvar="LLMCHAIN_DATA",
                                  help="Where the built-in sets' source data is."),
    work: Path | None = typer.Option(None, "--work", help="A built-in set's documents and index "
                                     "(default ./eval/retrieval-work/SET; reused, so a rerun embeds nothing)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report dir (default ./eval/retrieval-SET)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with EvalRetrievalConfig fields; flags win."),
) -> None:
    """Recall@k, MRR and nDCG@k of hybrid, dense-only and keyword-only search beside a BM25 baseline."""
    from llmchain.artifacts import atomic_write_text
    from llmchain.config import DataReaderConfig, EvalRetrievalConfig, IndexConfig, load_config
    from llmchain.errors import UserError
    from llmchain.eval.io import write_report
    from llmchain.rag.build import build_index
    from llmchain.rag.evaluate import build_report, builtin_set, evaluate, read_pairs
    from llmchain.rag.index import Index

    cfg = load_config(EvalRetrievalConfig, config, k=sorted(set(k)) if k else None, limit=limit, encoder=encoder)
    if any(x < 1 for x in cfg.k):
        raise UserError(f"--k must be at least 1, got {min(cfg.k)}")
    if (set_name is None) == (index is None):
        raise UserError("give either --set csl|self-instruct, or --index INDEX with --queries FILE")
    if index is not None:
        if queries is None:
            raise UserError("--index needs --queries FILE (records with `query` and `relevant`)")
        name, index_path = index.stem, index
        pairs = read_pairs(queries, cfg.limit)
    else:
        name = set_name
        work = work or Path("eval") / "retrieval-work" / set_name
        pairs = builtin_set(set_name, data_dir, work / "docs", cfg.limit)
        index_path = work / "index.sqlite"
        s = build_index([str(work / "docs")], index_path,
                        IndexConfig(encoder=cfg.encoder, passage_tokens=cfg.passage_tokens, reader=DataReaderConfig()))
        typer.echo(f"index {index_path}: {s.passages:,} passages ({s.embedded:,} embedded now)", err=True)
    out = out or Path("eval") / f"retrieval-{name}"
    with Index.open(index_path) as idx:
        measured = evaluate(idx, pairs, cfg.k)
        report = build_report(name, idx, pairs, cfg.k, measured, cfg.model_dump(mode="json"))
    write_report(out, report, {"index": index_path, "queries": queries})
    atomic_write_text(out / "report.md", f"# Retrieval: {name}\n\n{report['n']:,} queries, {report['passages']:,} "
                      f"passages, encoder {report['encoder']}\n\n{report['markdown']}\n")
    print_report(report, out)
