"""`llmchain export MODEL_DIR`: a clean Hugging Face dir or a GGUF file (read back and checked)."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.commands.run import rich_console


def export(
    model_dir: Path = typer.Argument(..., help="A model dir (config.json + model.safetensors + tokenizer)."),
    format: str = typer.Option("hf", "--format", "-f", help="hf (transformers, vLLM) or gguf (llama.cpp, Ollama)."),
    dtype: str | None = typer.Option(None, "--dtype", help="hf: f32|f16|bf16 (f32); gguf: f32|f16|q8_0 (f16)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dir (hf) or .gguf file (default: beside)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer dir if MODEL_DIR has none."),
) -> None:
    """Export a model to a clean Hugging Face dir or a GGUF file (checked by reading it back)."""
    from llmchain.model.export import export_model

    summary = export_model(model_dir, out, format=format, dtype=dtype, tokenizer_dir=tokenizer)
    console = rich_console()
    console.print(f"wrote {summary['path']} ({summary['format']}, {summary['dtype']})")
    if summary["format"] == "gguf":
        console.print(f"  {summary['tensors']} tensors, {summary['tokens']} tokens, {summary['bytes'] / 1e6:.1f} MB; "
                      "read back and checked")  # fmt: skip
        console.print(f"  run it: llama-cli -m {summary['path']} -p 'ROMEO:' -n 64")
    else:
        if not summary.get("tokenizer"):
            console.print("  [yellow]note:[/] no tokenizer files were found; pass --tokenizer DIR for vLLM")
        console.print(f"  load it: AutoModelForCausalLM.from_pretrained('{summary['path']}'); "
                      f"vllm serve {summary['path']}")  # fmt: skip
