"""`llmchain finetune sft|classify`: adapt a base model to a task (chat SFT, full or LoRA; classification)."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.errors import Interrupted


def _quiet_hf() -> None:
    # transformers' per-call progress bars ("Loading weights", "Writing model shards") and its warning about
    # texts longer than the tokenizer's model_max_length (we truncate or drop them ourselves) are noise here.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _resume_config(config: Path | None, resume: str | None, out: str | None) -> Path | None:
    if config is None and resume and out and (Path(out) / "config.yaml").is_file():
        return Path(out) / "config.yaml"  # resuming: the run's own config, changed only by the flags given
    return config


def sft(
    model: str = typer.Option(None, "--model", help="Base model dir (HF format with tokenizer + chat_template)."),
    data: str = typer.Option(None, "--data", help="JSONL/JSON: OpenAI messages, Alpaca, or prompt/completion."),
    out: str = typer.Option(None, "--out", help="Run dir: samples/, checkpoints/, adapter/ (LoRA), final/."),
    config: Path = typer.Option(None, "--config", help="YAML with any of these fields (flags win)."),
    format: str = typer.Option(None, "--format", help="auto, messages, alpaca, prompt_completion."),
    val_data: str = typer.Option(None, "--val-data", help="Validation file (default: --val-fraction of data)."),
    val_fraction: float = typer.Option(None, "--val-fraction"),
    seq_len: int = typer.Option(None, "--seq-len", help="Max tokens per example / packed row."),
    too_long: str = typer.Option(None, "--too-long", help="truncate or drop examples over --seq-len."),
    pack: bool = typer.Option(None, "--pack/--no-pack", help="Pack examples into rows (no cross-attention)."),
    system_prompt: str = typer.Option(None, "--system-prompt", help="System message for records without one."),
    lora: bool = typer.Option(None, "--lora/--full", help="LoRA adapters (PEFT) or all weights."),
    lora_r: int = typer.Option(None, "--lora-r"),
    lora_alpha: float = typer.Option(None, "--lora-alpha"),
    lora_dropout: float = typer.Option(None, "--lora-dropout"),
    lora_targets: str = typer.Option(None, "--lora-targets", help="Comma-separated module names."),
    merge: bool = typer.Option(None, "--merge/--no-merge", help="LoRA: also write the merged model to OUT/final."),
    epochs: float = typer.Option(None, "--epochs"),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    max_time: str = typer.Option(None, "--max-time", help="Wall-time budget: 300, 90s, 5m."),
    batch_size: int = typer.Option(None, "--batch-size"),
    grad_accum: int = typer.Option(None, "--grad-accum"),
    lr: float = typer.Option(None, "--lr", help="Peak LR (default 2e-5; LoRA usually 1e-4..1e-3)."),
    warmup_steps: int = typer.Option(None, "--warmup-steps"),
    weight_decay: float = typer.Option(None, "--weight-decay"),
    samples: int = typer.Option(None, "--samples", help="Val prompts answered after each eval (samples/)."),
    sample_tokens: int = typer.Option(None, "--sample-tokens", help="Max new tokens per sample reply."),
    keep_best: bool = typer.Option(None, "--keep-best/--keep-last",
                                   help="final/ = the eval with the lowest val loss (default: the last step)."),
    patience: int = typer.Option(None, "--patience", help="Stop after N evals without a lower val loss (0: off)."),
    precision: str = typer.Option(None, "--precision", help="auto, bf16, fp16, fp32."),
    device: str = typer.Option(None, "--device"),
    eval_every: int = typer.Option(None, "--eval-every", help="Steps between evals (default: each epoch)."),
    save_every: int = typer.Option(None, "--save-every", help="Steps between checkpoints (default: each epoch)."),
    log_every: int = typer.Option(None, "--log-every", help="Steps between progress/metrics lines."),
    resume: str = typer.Option(None, "--resume", help="auto: continue from the newest complete checkpoint."),
    seed: int = typer.Option(None, "--seed"),
    threads: int = typer.Option(None, "--threads"),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="A malformed record is an error."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Chat/instruction fine-tuning, loss on assistant tokens only; full or LoRA; resumable."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet", "lora_targets")}
    if lora_targets is not None:
        flags["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    from llmchain.config import SFTConfig, load_config
    from llmchain.train.distributed import teardown_runtime
    from llmchain.train.sft import finetune_sft

    _quiet_hf()
    cfg = load_config(SFTConfig, _resume_config(config, resume, out), **flags)
    try:
        result = finetune_sft(cfg, quiet=quiet)
    finally:
        teardown_runtime()
    if not result.fit.completed:
        raise Interrupted(f"stopped by {result.fit.stopped_by} at step {result.fit.step} (checkpoint "
                          f"{result.fit.checkpoint}); continue with --resume auto")
    if not quiet:
        _sft_summary(result)


def _sft_summary(r) -> None:
    from rich.console import Console
    from rich.table import Table

    c = r.counts
    table = Table(title="finetune sft", show_header=False)
    table.add_row("examples (train / val)", f"{c['train_examples']:,} / {c['val_examples']:,}  ({c['format']})")
    notes = [f"{c[k]} {k.replace('_', ' ')}" for k in ("truncated", "dropped_too_long", "rejected") if c[k]]
    if notes:
        table.add_row("data notes", ", ".join(notes) + (" (rejected.jsonl)" if c["rejected"] else ""))
    table.add_row("tokens (all / loss)", f"{c['train_tokens']:,} / {c['loss_tokens']:,}")
    table.add_row("trainable parameters", f"{c['trainable_params']:,}")
    table.add_row("steps / epochs", f"{c['steps']} / {c['epochs_run']:g}")
    if "loss" in r.fit.eval:
        table.add_row("val loss", f"{r.fit.eval['loss']:.4f}")
    if c["best_step"] is not None:
        kept = "final/" if c["final_is_best"] else "not kept (--keep-best keeps it)"
        stop = ", early stop" if c["early_stopped"] else ""
        table.add_row("best val loss", f"{c['best_val_loss']:.4f} at step {c['best_step']}: {kept}{stop}")
    table.add_row("time", f"{c['wall_s']:.0f} s")
    if r.adapter:
        table.add_row("adapter (PEFT)", str(r.adapter))
    if r.final:
        table.add_row("model", str(r.final))
    table.add_row("run", f"{r.run_dir}: metrics.jsonl, loss.png, samples/, tb/")
    Console().print(table)


def classify(
    model: str = typer.Option(None, "--model", help="HF encoder dir (BERT family), our model dir, or 'minilm'."),
    train: str = typer.Option(None, "--train", help="CSV, TSV or JSONL with a text and a label column."),
    val: str = typer.Option(None, "--val", help="Validation file (default: --val-fraction of train)."),
    test: str = typer.Option(None, "--test", help="Optional test file, scored once with the best model."),
    out: str = typer.Option(None, "--out", help="Run dir; the best model goes to OUT/best."),
    text_column: str = typer.Option(None, "--text-column", help="Default: text, sentence, review, content..."),
    label_column: str = typer.Option(None, "--label-column", help="Default: label, class, category, target..."),
    no_header: bool = typer.Option(False, "--no-header", help="CSV/TSV without a header row: columns by index "
                                   "(--text-column 1 --label-column 0). Default: sniffed."),
    config: Path = typer.Option(None, "--config", help="YAML with any of these fields (flags win)."),
    epochs: int = typer.Option(None, "--epochs", help="Passes over the training data."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    max_time: str = typer.Option(None, "--max-time", help="Wall-time budget: 300, 90s, 5m."),
    batch_size: int = typer.Option(None, "--batch-size"),
    grad_accum: int = typer.Option(None, "--grad-accum"),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 5e-5)."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Default: 6% of the steps."),
    weight_decay: float = typer.Option(None, "--weight-decay"),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per text (longer ones are truncated)."),
    class_weights: bool = typer.Option(None, "--class-weights/--no-class-weights",
                                       help="Weight the loss by inverse class frequency (unbalanced data)."),
    patience: int = typer.Option(None, "--patience", help="Early stop after N epochs without better val F1."),
    threshold: str = typer.Option(None, "--threshold", help="Two labels: argmax (default), or val: the decision "
                                  "threshold with the best val macro-F1 (saved with the model)."),
    pooling: str = typer.Option(None, "--pooling", help="Our decoder's head: last (token, default) or mean."),
    schedule_end: str = typer.Option(None, "--schedule-end", help="auto, or first: the LR decays to its end by "
                                     "whichever of --epochs/--max-steps and --max-time comes first."),
    log_every: int = typer.Option(None, "--log-every", help="Steps between progress/metrics lines."),
    val_fraction: float = typer.Option(None, "--val-fraction"),
    precision: str = typer.Option(None, "--precision", help="auto, bf16, fp16, fp32."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N, mps."),
    resume: str = typer.Option(None, "--resume", help="auto: continue from the newest complete checkpoint."),
    seed: int = typer.Option(None, "--seed"),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch."),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="A malformed row is an error."),
    embedding_rows: str = typer.Option(None, "--embedding-rows",
                                       help="used (default: train only the rows of tokens in the data; same math) or all."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Fine-tune a text classifier; per epoch: accuracy, macro P/R/F1, confusion PNG; best model in OUT/best."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet", "no_header")}
    flags["header"] = False if no_header else None
    from llmchain.config import ClassifyConfig, load_config
    from llmchain.train.classify import finetune_classifier
    from llmchain.train.distributed import teardown_runtime

    _quiet_hf()
    cfg = load_config(ClassifyConfig, _resume_config(config, resume, out), **flags)
    try:
        summary = finetune_classifier(cfg, quiet=quiet)
    finally:
        teardown_runtime()
    if not summary["completed"]:
        raise Interrupted(f"stopped at step {summary['steps']}; continue with --resume auto")
    if not quiet:
        _classify_summary(summary)


def _classify_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="finetune classify", show_header=False)
    table.add_row("rows (train / val)", f"{s['train_rows']:,} / {s['val_rows']:,}"
                  + (f"  ({s['rejected_rows']} rejected: rejected.jsonl)" if s["rejected_rows"] else ""))
    table.add_row("labels", ", ".join(s["labels"][:12]) + (" ..." if len(s["labels"]) > 12 else ""))
    table.add_row("steps / epochs", f"{s['steps']} / {s['epochs_run']:g}")
    best = s.get("best_val") or {}
    if best:
        table.add_row(f"best val (epoch {best['epoch']:g})",
                      f"accuracy {best['accuracy']:.4f}  macro-F1 {best['f1']:.4f}  "
                      f"P {best['precision']:.4f}  R {best['recall']:.4f}")
    if "threshold" in s:
        th = s["threshold"]
        table.add_row("decision threshold (val)", f"{th['threshold']:.2f}: val macro-F1 {th['val_f1']:.4f} "
                      f"(argmax {th['val_f1_argmax']:.4f})")
    if "test" in s:
        t = s["test"]
        table.add_row("test (best model)", f"accuracy {t['accuracy']:.4f}  macro-F1 {t['f1']:.4f}")
    table.add_row("time", f"{s['wall_s']:.0f} s")
    table.add_row("model", s["best_dir"])
    table.add_row("run", f"{s['run_dir']}: metrics.jsonl, confusion-epoch-N.png, loss.png, tb/")
    Console().print(table)
