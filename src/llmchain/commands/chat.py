"""`llmchain chat MODEL_DIR`: chat with a model in the terminal, through the inference engine."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.commands.serve import check_model_dir, check_weights
from llmchain.errors import UserError


def chat(
    model_dir: Path = typer.Argument(..., help="An HF-format model dir with a chat template."),
    system: str = typer.Option(None, help="System prompt."),
    temperature: float = typer.Option(0.7, min=0.0, help="Sampling temperature (0 = greedy)."),
    max_tokens: int = typer.Option(256, min=1, help="Most tokens per reply."),
    chat_template: Path = typer.Option(None, help="A Jinja chat template file replacing the tokenizer's."),
    seed: int = typer.Option(None, help="Seed for reproducible replies."),
    weights: str = typer.Option("auto", help="Decode-step weights: auto, float32, bfloat16, int8."),
) -> None:
    """Chat with a model in the terminal (the same conversation the web page has). /reset, /exit."""
    from llmchain.infer.engine import load_engine
    from llmchain.infer.sampling import SamplingParams

    check_model_dir(model_dir)
    template = None
    if chat_template:
        if not chat_template.is_file():
            raise UserError(f"--chat-template: file not found: {chat_template}")
        template = chat_template.read_text(encoding="utf-8")
    # The server's engine, stop tokens and defaults, one sequence at a time: chat stops where serve stops.
    try:
        engine = load_engine(model_dir, max_batch_size=1, threads=1, chat_template=template,
                             weights=check_weights(weights))  # fmt: skip
    except ValueError as e:  # int8/bf16 weights where the fused decode step cannot run
        raise UserError(f"--weights {weights}: {e}") from None
    tok = engine.tokenizer
    if not tok.chat_template:
        raise UserError(f"{model_dir} has no chat template (tokenizer_config.json 'chat_template'); "
                        "pass --chat-template FILE")  # fmt: skip
    engine.start()
    history: list[dict[str, str]] = []
    typer.echo(f"chatting with {model_dir} — /reset starts over, /exit (or Ctrl-D) quits")
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                history.clear()
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            msgs = ([{"role": "system", "content": system}] if system else []) + history
            ids = tok.encode(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)  # fmt: skip
            if len(ids) >= engine.max_model_len:
                typer.echo(f"(the conversation no longer fits the context of {engine.max_model_len}; /reset)")
                history.pop()
                continue
            handle = engine.submit(ids, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed))
            reply = []
            typer.echo("model> ", nl=False)
            try:
                for ev in handle.iter_events():
                    reply.append(ev.text)
                    typer.echo(ev.text, nl=False)
            except KeyboardInterrupt:  # stop this reply, keep the conversation
                engine.cancel(handle)
            typer.echo()
            history.append({"role": "assistant", "content": "".join(reply)})
    finally:
        engine.stop()
