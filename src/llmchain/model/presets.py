"""Named model sizes, from ~1M parameters (CPU tests) to ~1B (GPU).

A preset fixes the shape; the vocabulary comes from the tokenizer at training time. Parameter
counts below are for a 4,096-token vocabulary except where said (`llmchain presets` prints them for
any vocab size).
"""

from __future__ import annotations

from dataclasses import replace

from llmchain.errors import UserError
from llmchain.model.llama import LlamaConfig

PRESETS: dict[str, LlamaConfig] = {
    # name: hidden, intermediate, layers, heads, kv heads, context
    "nano": LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "micro": LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
    "tiny": LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
                        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True),
    "small": LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True),
    "base": LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                        num_key_value_heads=4, max_position_embeddings=2048),
    "medium": LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                          num_key_value_heads=8, max_position_embeddings=2048),
    # TinyLlama-1.1B's shape: ~1B parameters
    "large": LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, max_position_embeddings=2048),
}  # fmt: skip


def preset_config(name: str, vocab_size: int, **overrides) -> LlamaConfig:
    """The config of preset `name` for a tokenizer of `vocab_size`; UserError for an unknown name."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (see `llmchain presets`)")
    return replace(PRESETS[name], vocab_size=vocab_size, **overrides)
