"""`llmchain pretrain`: train a Llama-family model from scratch on token shards (alone or under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.errors import Interrupted


def pretrain(
    data: str = typer.Option(None, "--data", help="Token shards dir (llmchain data pack)."),
    preset: str = typer.Option(None, "--preset", help="Model size: nano, micro, tiny, small, base, ..."),
    out: str = typer.Option(None, "--out", help="Run dir (runs/NAME)."),
    config: Path = typer.Option(None, "--config", help="YAML with any of these fields (flags win)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps."),
    max_time: str = typer.Option(None, "--max-time", help="Wall-time budget: 300, 90s, 5m, 1h30m."),
    batch_size: int = typer.Option(None, "--batch-size", help="Sequences per micro-batch per process."),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per sequence."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    min_lr: float = typer.Option(None, "--min-lr", help="Final learning rate (default lr/10)."),
    lr_schedule: str = typer.Option(None, "--lr-schedule", help="cosine or linear decay to --min-lr."),
    warmup_steps: int = typer.Option(None, "--warmup-steps"),
    weight_decay: float = typer.Option(None, "--weight-decay"),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Max global grad norm (0: off)."),
    dropout: float = typer.Option(None, "--dropout", help="Training dropout (embeddings, residuals)."),
    ema: float = typer.Option(None, "--ema", help="Average the weights (EMA decay per step, e.g. 0.99; 0: off)."),
    precision: str = typer.Option(None, "--precision", help="auto, bf16, fp16, fp32."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N, mps."),
    strategy: str = typer.Option(None, "--strategy", help="Under torchrun: ddp or fsdp."),
    eval_every: int = typer.Option(None, "--eval-every", help="Steps between evals (0: only at the end)."),
    eval_batches: int = typer.Option(None, "--eval-batches"),
    save_every: int = typer.Option(None, "--save-every", help="Steps between checkpoints."),
    keep_checkpoints: int = typer.Option(None, "--keep-checkpoints"),
    log_every: int = typer.Option(None, "--log-every"),
    resume: str = typer.Option(None, "--resume", help="auto: continue from the newest complete checkpoint."),
    seed: int = typer.Option(None, "--seed"),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: the one the shards record)."),
    init_from: str = typer.Option(None, "--init-from", help="Continue pretraining this model dir."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Pretrain a model on token shards: checkpoints, --resume auto, metrics.jsonl, TensorBoard, RUN/final."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    from llmchain.config import PretrainConfig, load_config
    from llmchain.errors import ConfigError
    from llmchain.train.distributed import teardown_runtime
    from llmchain.train.pretrain import run_pretrain

    if config is None and resume and out and (Path(out) / "config.yaml").is_file():
        config = Path(out) / "config.yaml"  # resuming: the run's own config, changed only by the flags given
    cfg = load_config(PretrainConfig, config, **flags)
    if not cfg.max_steps and not cfg.max_time:
        raise ConfigError("set --max-steps N or --max-time DURATION (e.g. 5m): the run needs an end")
    try:
        result = run_pretrain(cfg, quiet=quiet)
    finally:
        teardown_runtime()
    if not result.fit.completed:
        # Stopped by a signal after checkpointing. (typer.Exit(130) would come back as 0 through cli.main.)
        raise Interrupted(f"stopped by {result.fit.stopped_by} at step {result.fit.step} (checkpoint "
                           f"{result.fit.checkpoint}); continue with --resume auto")
    if result.final is not None and not quiet:
        _summary(result)


def _summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    fit = result.fit
    table = Table(title="pretrain", show_header=False)
    table.add_row("parameters", f"{result.params / 1e6:.2f}M")
    table.add_row("steps / tokens", f"{fit.step:,} / {fit.tokens:,}")
    table.add_row("time", f"{fit.elapsed_s:.0f} s ({fit.tokens / max(fit.elapsed_s, 1e-9):,.0f} tokens/s)")
    for key in ("loss", "perplexity", "bits_per_byte"):
        if key in fit.eval:
            table.add_row(f"val {key}", f"{fit.eval[key]:.4f}")
    table.add_row("model", str(result.final))
    table.add_row("metrics", f"{result.run_dir / 'metrics.jsonl'}, {result.run_dir / 'loss.png'}, tb/")
    if result.tokenizer is None:
        table.add_row("note", "no tokenizer found: pass --tokenizer to make RUN/final servable")
    Console().print(table)
