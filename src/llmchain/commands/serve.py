"""`llmchain serve MODEL_DIR`: the OpenAI-compatible server with continuous batching, plus a chat page."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.errors import UserError


def check_weights(weights: str) -> str:
    """`weights` if it is one the engine takes (--weights of serve, generate, chat), else UserError."""
    choices = ("auto", "float32", "bfloat16", "int8")  # ServeConfig.weights
    if weights not in choices:
        raise UserError(f"--weights {weights}: one of {', '.join(choices)}")
    return weights


def check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json)")


def serve(
    model_dir: Path = typer.Argument(..., help="An HF-format model dir (ours or any local Llama-family dir)."),
    host: str = typer.Option(None, help="Interface to bind (default 127.0.0.1); 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    api_key: str = typer.Option(None, "--api-key", envvar="LLMCHAIN_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    public_metrics: bool = typer.Option(False, "--public-metrics", help="Serve /metrics without the API key."),
    served_model_name: str = typer.Option(None, help="Model name clients use (default: the dir name)."),
    max_batch_size: int = typer.Option(None, help="Sequences decoded together (KV-cache slots; default 16)."),
    max_queue: int = typer.Option(None, help="Waiting requests beyond this get 503 + Retry-After (default 256)."),
    max_model_len: int = typer.Option(None, help="Context length (prompt + output; default: the model's)."),
    chat_template: Path = typer.Option(None, help="A Jinja chat template file replacing the tokenizer's."),
    threads: int = typer.Option(None, min=1, help="torch CPU threads (default 1: batch-invariant decoding at any "
                                "batch size, no OpenMP stalls on a busy machine; more may be faster on idle cores)."),
    dtype: str = typer.Option(None, help="Matmul precision: auto (default: bf16 on CPUs with AMX, else the "
                              "weights' dtype), bfloat16 or float32."),
    index: Path = typer.Option(None, "--index", help="An index (`llmchain index`): chat answers from its "
                               "passages, with verified [n] citations (docs/qa.md)."),
    index_k: int = typer.Option(None, "--index-k", help="Passages put in each chat prompt (default 4)."),
    embedding_model: str = typer.Option(None, "--embedding-model", help="Serve /v1/embeddings with this "
                                        "encoder: minilm or an encoder dir (default with --index: its encoder)."),
    weights: str = typer.Option(None, help="Decode-step weights: auto (default: bf16 in the fused C step on CPUs "
                                "without AMX), float32, bfloat16 or int8 (smaller and faster; see docs/decode.md)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with these fields."),
) -> None:
    """Serve a model over an OpenAI-compatible API with continuous batching, plus a chat page at /."""
    import uvicorn

    from llmchain.config import ServeConfig, load_config
    from llmchain.serve.api import ServeOptions, create_app

    check_model_dir(model_dir)
    cfg = load_config(ServeConfig, config, host=host, port=port, api_key=api_key,
                      public_metrics=public_metrics or None, served_model_name=served_model_name,
                      max_batch_size=max_batch_size, max_queue=max_queue, max_model_len=max_model_len,
                      chat_template=str(chat_template) if chat_template else None, threads=threads,
                      dtype=dtype, weights=weights, index=str(index) if index else None, index_k=index_k,
                      embedding_model=embedding_model)  # fmt: skip
    if cfg.dtype == "bfloat16":  # checked here too: the server loads the model after startup, too late for exit 2
        import torch

        from llmchain.infer.forward import use_bf16

        try:
            use_bf16(cfg.dtype, torch.device(cfg.device), torch.float32)
        except ValueError as e:
            raise UserError(f"--dtype: {e}") from None
    if cfg.weights != "auto" and cfg.dtype == "bfloat16":
        raise UserError(f"--weights {cfg.weights} runs on the fused decode step, which --dtype bfloat16 excludes")
    if cfg.chat_template and not Path(cfg.chat_template).is_file():
        raise UserError(f"--chat-template: file not found: {cfg.chat_template}")
    if cfg.index and not Path(cfg.index).is_file():
        raise UserError(f"--index: file not found: {cfg.index} (build one with `llmchain index`)")
    opts = ServeOptions(model_dir=str(model_dir), **cfg.model_dump())
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        typer.echo(f"warning: serving on {cfg.host} without --api-key: anyone who can reach it can use it", err=True)
    typer.echo(f"serving {model_dir} at http://{cfg.host}:{cfg.port}  (chat page: /, API: /v1, docs: /docs)")
    uvicorn.run(create_app(opts), host=cfg.host, port=cfg.port, log_level="info")
