"""Load and save Hugging Face-format model directories.

A model dir is what `transformers.AutoModelForCausalLM.from_pretrained` opens: `config.json`
(Llama family), `model.safetensors`, `generation_config.json` and the tokenizer files. Weights are
only ever read from safetensors (never unpickled).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmchain.artifacts import atomic_dir, write_manifest
from llmchain.errors import UserError
from llmchain.model.llama import Llama, LlamaConfig

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_config(model_dir: str | Path) -> LlamaConfig:
    """The model's LlamaConfig; a missing/unsupported config is a UserError naming the dir."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json)")
    try:
        return LlamaConfig.from_hf_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from None


def read_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or sharded `model-*.safetensors`; UserError when there are none."""
    files = sorted(Path(model_dir).glob("model*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no model.safetensors (only safetensors weights are loaded)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Llama:
    """A `Llama` with the weights of an HF-format dir (ours or any local Llama/Qwen2 dir), in eval mode.

    Reads `model.safetensors` or sharded `model-*.safetensors`. Raises UserError when the dir has
    no weights or they do not fit the config.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    state = read_state_dict(model_dir)
    with torch.device("meta"):
        model = Llama(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(
            f"{model_dir}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers that are not saved (RoPE frequencies) were created on meta: rebuild them for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config.head_dim, config.rope_theta)
    target = dtype or DTYPES.get(config.torch_dtype, torch.float32)
    return model.to(device=device, dtype=target).eval()


def save_model(
    model: Llama,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
    generation: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as an HF-format dir at `out_dir` (atomically: the dir appears complete or not at all).

    Copies the tokenizer files from `tokenizer_dir` when given. `manifest` (kind, inputs, config,
    counts) is recorded as `manifest.json`. Returns the dir.
    """
    config = model.config
    dtype = dtype or next(model.parameters()).dtype
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared tensors; HF re-ties on load
    hf = config.to_hf_dict()
    hf["torch_dtype"] = hf["dtype"] = str(dtype).removeprefix("torch.")
    gen = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, key) is not None:
            gen[key] = getattr(config, key)
    gen.update(generation or {})
    with atomic_dir(out_dir) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / name).is_file():
                    shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
        m = dict(manifest or {})
        write_manifest(
            tmp,
            m.pop("kind", "model"),
            inputs=m.pop("inputs", None),
            config=m.pop("config", None),
            counts={"parameters": model.num_params(), **m.pop("counts", {})},
            extra=m or None,
        )
    return Path(out_dir)
