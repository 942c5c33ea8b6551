"""`llmchain presets`: the named model sizes with their shapes and parameter counts."""

from __future__ import annotations

import typer


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
