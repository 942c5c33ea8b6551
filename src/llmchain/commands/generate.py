"""`llmchain generate`: continue a prompt with a model dir, through the inference engine."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.commands.serve import check_weights
from llmchain.errors import UserError


def generate(
    prompt: str = typer.Argument(..., help="Text to continue (with --chat: the user's message)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model dir (HF format, with tokenizer files)."),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample among the k most likely tokens."),
    top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling: smallest set with this mass."),
    seed: int | None = typer.Option(None, "--seed", help="Seed: same seed → same text."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template as a user turn."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps ..."),
    weights: str = typer.Option("auto", "--weights", help="Decode-step weights: auto, float32, bfloat16, int8."),
) -> None:
    """Continue PROMPT with a model dir; prints only the generated text. Stops where `serve` stops (EOS,
    generation_config.json's eos ids, end-of-turn tokens)."""
    import torch

    from llmchain.infer.engine import load_engine
    from llmchain.infer.sampling import SamplingParams

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
    try:
        engine = load_engine(model, device=device, max_batch_size=1, weights=check_weights(weights))
    except ValueError as e:  # int8/bf16 weights where the fused decode step cannot run
        raise UserError(f"--weights {weights}: {e}") from None
    tok = engine.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise UserError(f"{model}: --chat needs a chat template (tokenizer_config.json 'chat_template')")
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = tok.encode(prompt, add_special_tokens=False) or [tok.eos_token_id]  # empty prompt: start a document
    context = engine.max_model_len
    if len(ids) + max_new_tokens > context:
        raise UserError(f"prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} the model's "
                        f"context ({context}) leaves room for {max(context - max_new_tokens, 0)}")
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k or 0,
                            top_p=top_p or 1.0, seed=seed)  # fmt: skip
    typer.echo(engine.generate([ids], params)[0][0].text)
