"""`llmchain tokenizer train`, `llmchain data pack`, `llmchain generate`, `llmchain presets`.

Thin: parse the flags, call the stage function, print a one-screen summary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

tokenizer_app = typer.Typer(help="Train a byte-level BPE tokenizer (HF-loadable, with a chat template).",
                            no_args_is_help=True)  # fmt: skip


def _summary(title: str, rows: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)


@tokenizer_app.command("train")
def tokenizer_train(
    docs: Path = typer.Argument(
        ..., help="Documents: a prepared dir (`llmchain data prepare`), .jsonl(.gz) or .txt."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output tokenizer dir (replaced atomically)."),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Vocabulary size (default 4096; ≥ 260)."
    ),
    min_frequency: int | None = typer.Option(
        None, "--min-frequency", help="Minimum count of a merge (default 2)."
    ),
    max_documents: int | None = typer.Option(None, "--max-documents", help="Train on the first N documents."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Leave out the val split `data pack` makes with the same value (default 0)."
    ),
    split_by: str | None = typer.Option(None, "--split-by", help="documents or chars, as for `data pack`."),
    config: Path | None = typer.Option(None, "--config", help="YAML with TokenizerConfig fields; flags win."),
) -> None:
    """Train byte-level BPE on DOCS and save a dir that `transformers.AutoTokenizer` opens."""
    from llmchain.config import TokenizerConfig, load_config
    from llmchain.tokenizer import train_tokenizer

    cfg = load_config(TokenizerConfig, config, vocab_size=vocab_size, min_frequency=min_frequency,
                      max_documents=max_documents, val_fraction=val_fraction, split_by=split_by)  # fmt: skip
    start = time.perf_counter()
    result = train_tokenizer(docs, cfg.vocab_size, out, min_frequency=cfg.min_frequency,
                             max_documents=cfg.max_documents, model_max_length=cfg.model_max_length,
                             val_fraction=cfg.val_fraction, split_by=cfg.split_by,
                             show_progress=sys.stderr.isatty())  # fmt: skip
    _summary("tokenizer trained", {
        "documents": result["documents"], "characters": result["characters"],
        "vocab size": result["vocab_size"], "seconds": f"{time.perf_counter() - start:.1f}", "saved to": out,
    })  # fmt: skip


def data_pack(
    docs: Path = typer.Argument(..., help="Documents: a prepared dir, .jsonl(.gz) or .txt."),
    tokenizer: Path = typer.Option(
        ..., "--tokenizer", "-t", help="Tokenizer dir (`llmchain tokenizer train`)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output shards dir (replaced atomically)."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Share held out for val (default 0.1)."
    ),
    split_by: str | None = typer.Option(
        None,
        "--split-by",
        help="documents (default): every k-th document to val; chars: last part of each text.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Tokenizer processes (default: CPU count, ≤ 8)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML with PackConfig fields; flags win."),
) -> None:
    """Tokenize DOCS into flat uint16/uint32 token shards (train/val) + shards.json (nanoGPT's format)."""
    from llmchain.config import PackConfig, load_config
    from llmchain.data.pack import pack_documents

    cfg = load_config(PackConfig, config, val_fraction=val_fraction, split_by=split_by, workers=workers)
    start = time.perf_counter()
    meta = pack_documents(docs, tokenizer, out, val_fraction=cfg.val_fraction, split_by=cfg.split_by,
                          workers=cfg.workers, shard_tokens=cfg.shard_tokens, show_progress=True)  # fmt: skip
    rows: dict[str, object] = {}
    for split, s in meta["splits"].items():
        rows[f"{split} documents"] = s["documents"]
        rows[f"{split} tokens"] = s["tokens"]
        rows[f"{split} bytes"] = s["bytes"]
    rows.update({"dtype": meta["dtype"], "seconds": f"{time.perf_counter() - start:.1f}", "saved to": out})
    _summary("token shards", rows)


def generate(
    prompt: str = typer.Argument(..., help="Text to continue (with --chat: the user's message)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model dir (HF format, with tokenizer files)."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample among the k most likely tokens."),
    top_p: float | None = typer.Option(
        None, "--top-p", help="Nucleus sampling: smallest set with this mass."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed: same seed → same text."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template as a user turn."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps ..."),
) -> None:
    """Continue PROMPT with a model dir; prints only the generated text."""
    import torch

    from llmchain.errors import UserError
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    if max_new_tokens < 1 or temperature < 0 or (top_k is not None and top_k < 1):
        raise UserError("--max-new-tokens and --top-k must be ≥ 1, --temperature ≥ 0")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p} must be in (0, 1]")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps ...)") from None
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (
        dev.type == "mps" and not torch.backends.mps.is_available()
    ):
        raise UserError(f"--device {device}: not available on this machine (use --device cpu)")
    tok = load_tokenizer(model)  # first: a dir without tokenizer files fails before loading weights
    lm = load_model(model, device=device)
    if chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = tok.encode(prompt, add_special_tokens=False) or [tok.eos_token_id]  # empty prompt: start a document
    room = lm.config.max_position_embeddings - max_new_tokens
    if len(ids) > room:
        raise UserError(
            f"prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} the model's "
            f"context ({lm.config.max_position_embeddings}) leaves room for {max(room, 0)}"
        )
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = tok.convert_tokens_to_ids("<|im_end|>") if chat else tok.eos_token_id
    out = lm.generate(torch.tensor([ids], device=device), max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, eos_token_id=stop, generator=gen)  # fmt: skip
    new = [t for t in out[0, len(ids) :].tolist() if t != stop]
    typer.echo(tok.decode(new, skip_special_tokens=False))


def presets(
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Vocabulary size the parameter counts assume."),
) -> None:
    """List the named model sizes with their shapes and parameter counts."""
    from rich.console import Console
    from rich.table import Table

    from llmchain.errors import UserError
    from llmchain.model.presets import PRESETS, preset_config

    if vocab_size < 1:
        raise UserError(f"--vocab-size {vocab_size} must be ≥ 1")
    table = Table(title=f"model presets (vocab {vocab_size:,})", title_justify="left")
    for col in ("preset", "params", "non-emb", "dim", "ffn", "layers", "heads", "kv", "ctx", "tied"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for name in PRESETS:
        c = preset_config(name, vocab_size)
        n = c.num_params()
        emb = c.vocab_size * c.hidden_size
        table.add_row(name, _human(n), _human(n - emb), str(c.hidden_size), str(c.intermediate_size),
                      str(c.num_hidden_layers), str(c.num_attention_heads), str(c.num_key_value_heads),
                      str(c.max_position_embeddings), "yes" if c.tie_word_embeddings else "no")  # fmt: skip
    Console().print(table)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def register(app: typer.Typer) -> None:
    from llmchain.commands.data import data_app

    app.add_typer(tokenizer_app, name="tokenizer")
    data_app.command("pack")(data_pack)
    app.command("generate")(generate)
    app.command("presets")(presets)
