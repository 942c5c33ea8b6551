"""Export a model dir so that other tools run it: a clean Hugging Face dir, or one GGUF file.

HF: `config.json` + `model.safetensors` + tokenizer files + `generation_config.json` — what
`transformers`, vLLM and TGI open. GGUF: llama.cpp's format (also Ollama's), written with the
`gguf` package the way llama.cpp's `convert_hf_to_gguf.py` writes a Llama/Qwen2 model:

- tensor names `token_embd`, `blk.N.attn_q` ... `output` (no `output` when embeddings are tied:
  llama.cpp falls back to `token_embd`);
- for the `llama` architecture the rows of Q and K (weights and biases) are permuted from HF's
  "rotate half" RoPE layout to llama.cpp's interleaved pairs (Qwen2 uses the NeoX layout: no permute);
- 1-D tensors (norms, biases) stay f32; f16/q8_0 apply to matrices (q8_0 needs rows of a multiple of
  32 values; other matrices fall back to f16, as the converter does);
- the tokenizer as `tokenizer.ggml.model = "gpt2"` (byte-level BPE: tokens, token types, merges),
  the pre-tokenizer name, bos/eos/pad/eot ids and the chat template.

`read_gguf` reads a file back into HF-named float32 tensors (undoing the permutation) and a
`LlamaConfig`; `export_gguf` uses it to check every tensor and key of what it wrote.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.artifacts import atomic_path, write_manifest
from llmchain.errors import UserError

GGUF_DTYPES = ("f32", "f16", "q8_0")
HF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# HF parameter name (after "model.layers.N.") → GGUF tensor name (after "blk.N.")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.bias": "ffn_down.bias",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}  # fmt: skip

# The split regex of a byte-level BPE → llama.cpp's name for it (`tokenizer.ggml.pre`).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def hf_to_gguf_name(name: str) -> str:
    """The GGUF tensor name of an HF Llama parameter name; KeyError for names GGUF has no place for."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"]:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    raise KeyError(name)


def gguf_to_hf_name(name: str) -> str:
    for hf, gg in _TOP_NAMES.items():
        if name == gg:
            return hf
    _, n, rest = name.split(".", 2)
    inverse = {v: k for k, v in _LAYER_NAMES.items()}
    return f"model.layers.{n}.{inverse[rest]}"


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order → llama.cpp's interleaved pairs, per head (weights or biases)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------ HF


def _tokenizer_source(model_dir: Path, tokenizer_dir: str | Path | None) -> Path | None:
    if tokenizer_dir is not None:
        t = Path(tokenizer_dir)
        if not (t / "tokenizer.json").is_file():
            raise UserError(f"{t}: no tokenizer.json (pass a tokenizer dir made by `llmchain tokenizer train`)")
        return t
    return model_dir if (model_dir / "tokenizer.json").is_file() else None


def export_hf(
    model_dir: str | Path, out_dir: str | Path, *, dtype: str = "f32", tokenizer_dir: str | Path | None = None
) -> dict[str, Any]:
    """Write a clean HF dir at `out_dir` (weights in `dtype`: f32, f16 or bf16) and return a summary.

    Only what loaders read is copied (no checkpoints, optimizer state or logs); a `README.md` model card
    travels along when the model dir has one. UserError for a bad model dir or dtype.
    """
    import torch

    from llmchain.model.io import load_model, save_model

    if dtype not in HF_DTYPES:
        raise UserError(f"--dtype {dtype}: HF export writes one of {', '.join(HF_DTYPES)} (q8_0 is GGUF only)")
    model_dir = Path(model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    tok = _tokenizer_source(model_dir, tokenizer_dir)
    gen_path = model_dir / "generation_config.json"
    generation = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else None
    save_model(
        model, out_dir, tokenizer_dir=tok, dtype=getattr(torch, HF_DTYPES[dtype]), generation=generation,
        manifest={"kind": "model-hf", "inputs": {"model": model_dir}, "config": {"format": "hf", "dtype": dtype}},
    )  # fmt: skip
    if (model_dir / "README.md").is_file():
        shutil.copy2(model_dir / "README.md", Path(out_dir) / "README.md")
    return {"format": "hf", "dtype": dtype, "path": str(out_dir), "parameters": model.num_params(),
            "tokenizer": str(tok) if tok else None}  # fmt: skip


# ---------------------------------------------------------------------------------------- GGUF


@dataclass
class GGUFTokenizer:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, pad, eot
    chat_template: str | None = None


def read_hf_tokenizer(tok_dir: Path, vocab_size: int) -> GGUFTokenizer:
    """Tokens (by id, padded to the model's vocab), types, merges and special ids of a byte-level BPE dir."""
    import gguf

    try:
        tj = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
        cfg_path = tok_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise UserError(f"{tok_dir}: unreadable tokenizer files ({e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{tok_dir}/tokenizer.json: GGUF export supports byte-level BPE tokenizers, "
                        f"not {model.get('type')!r}")  # fmt: skip
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in tj.get("added_tokens") or []}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise UserError(f"{tok_dir}: the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    by_id: list[str | None] = [None] * vocab_size
    for tok, i in vocab.items():
        by_id[i] = tok
    tokens, types = [], []
    for i, tok in enumerate(by_id):
        if tok is None:  # ids the model has but the tokenizer never emits (vocab padded to a round number)
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif tok in added:
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(tok)
            types.append(int(gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    special = {}
    for key in ("bos", "eos", "pad"):
        content = cfg.get(f"{key}_token")
        if isinstance(content, dict):
            content = content.get("content")
        if content in vocab:
            special[key] = vocab[content]
    if "<|im_end|>" in vocab:  # ChatML: the end of a turn ends generation in chat
        special["eot"] = vocab["<|im_end|>"]
    template = cfg.get("chat_template")
    if template is None and (tok_dir / "chat_template.jinja").is_file():
        template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return GGUFTokenizer(tokens, types, merges, _pre_tokenizer_name(tj, tok_dir), special, template)


def _pre_tokenizer_name(tj: dict[str, Any], tok_dir: Path) -> str:
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"  # ByteLevel's built-in split regex is GPT-2's
        if step.get("type") == "Split" and (step.get("pattern") or {}).get("Regex") == _GPT2_REGEX:
            return "gpt-2"
    raise UserError(
        f"{tok_dir}/tokenizer.json: its pre-tokenizer is not GPT-2's byte-level split, which is the one "
        "llama.cpp is told to use; retrain with `llmchain tokenizer train`"
    )


def _encode_tensor(name: str, w: np.ndarray, dtype: str):
    """(array, raw ggml type or None) for `gguf.GGUFWriter.add_tensor`."""
    import gguf

    if w.ndim == 1 or dtype == "f32":
        return w.astype(np.float32), None
    if dtype == "q8_0" and w.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w.astype(np.float32), q), q
    return w.astype(np.float16), None


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f16",
    tokenizer_dir: str | Path | None = None,
    name: str | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Write the model at `model_dir` as one GGUF file at `out_path` (atomically) and return a summary.

    With `verify`, the file is read back and every tensor compared with the source (f32 exactly,
    f16/q8_0 within their rounding) and every metadata key checked; a mismatch is a RuntimeError (a
    bug, not a user mistake). UserError for a bad model dir, a missing/unsupported tokenizer or dtype.
    """
    import gguf
    import torch

    from llmchain.model.io import read_config, read_state_dict

    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype}: GGUF export writes one of {', '.join(GGUF_DTYPES)}")
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    tok_dir = _tokenizer_source(model_dir, tokenizer_dir)
    if tok_dir is None:
        raise UserError(f"{model_dir}: no tokenizer.json; pass --tokenizer DIR (GGUF carries the tokenizer)")
    if cfg.attention_bias and cfg.model_type == "llama" or cfg.mlp_bias:
        raise UserError(f"{model_dir}: attention/MLP biases on a llama model are not exported to GGUF")
    tokenizer = read_hf_tokenizer(tok_dir, cfg.vocab_size)
    state = read_state_dict(model_dir)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    arch = "qwen2" if cfg.model_type == "qwen2" else "llama"
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]  # fmt: skip
    source: dict[str, np.ndarray] = {}
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name or model_dir.resolve().name)
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer.pre)
        w.add_token_list(tokenizer.tokens)
        w.add_token_types(tokenizer.types)
        w.add_token_merges(tokenizer.merges)
        for key, tid in tokenizer.special.items():
            getattr(w, f"add_{key}_token_id")(tid)
        w.add_add_bos_token(False)  # our tokenizer adds no BOS; llama.cpp must tokenize the same way
        w.add_add_eos_token(False)
        if tokenizer.chat_template:
            w.add_chat_template(tokenizer.chat_template)
        for hf_name, t in state.items():
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            try:
                gg_name = hf_to_gguf_name(hf_name)
            except KeyError:
                raise UserError(f"{model_dir}: tensor {hf_name!r} has no GGUF counterpart") from None
            arr = t.to(torch.float32).numpy()
            if arch == "llama" and ".attn_q." in gg_name:
                arr = permute_rope(arr, cfg.num_attention_heads)
            elif arch == "llama" and ".attn_k." in gg_name:
                arr = permute_rope(arr, cfg.num_key_value_heads)
            source[gg_name] = arr
            data, raw = _encode_tensor(gg_name, arr, dtype)
            w.add_tensor(gg_name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if verify:
            _verify(tmp, source, dtype, tokenizer, arch)
    size = out_path.stat().st_size
    return {"format": "gguf", "dtype": dtype, "path": str(out_path), "tensors": len(source), "bytes": size,
            "architecture": arch, "tokens": len(tokenizer.tokens)}  # fmt: skip


def _verify(path: Path, source: dict[str, np.ndarray], dtype: str, tok: GGUFTokenizer, arch: str) -> None:
    import gguf

    reader = gguf.GGUFReader(path)
    got = {t.name: t for t in reader.tensors}
    if set(got) != set(source):
        raise RuntimeError(f"GGUF tensors differ from the model: {sorted(set(got) ^ set(source))[:5]}")
    for name, ref in source.items():
        back = _dequantize(got[name])
        if back.shape != ref.shape:
            raise RuntimeError(f"GGUF tensor {name}: shape {back.shape} != {ref.shape}")
        if ref.ndim == 1 or dtype == "f32":
            ok = np.array_equal(back, ref)
        elif got[name].tensor_type == gguf.GGMLQuantizationType.F16:
            ok = np.array_equal(back, ref.astype(np.float16).astype(np.float32))
        else:  # q8_0: within half a step, plus 127 × the f16 rounding of the block scale (≤ 0.06 step)
            step = np.abs(ref.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            ok = bool((np.abs(back - ref).reshape(-1, 32) <= step * 0.6 + 1e-7).all())
        if not ok:
            raise RuntimeError(f"GGUF tensor {name} does not read back as written ({dtype})")
    fields = reader.fields
    expect = {"general.architecture": arch, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": tok.pre}
    for key, value in expect.items():
        if key not in fields or fields[key].contents() != value:
            raise RuntimeError(f"GGUF key {key} missing or wrong")
    if fields["tokenizer.ggml.tokens"].contents() != tok.tokens:
        raise RuntimeError("GGUF token list does not read back as written")
    if len(fields["tokenizer.ggml.merges"].data) != len(tok.merges):
        raise RuntimeError("GGUF merges do not read back as written")


def _dequantize(t) -> np.ndarray:
    import gguf

    data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))


def read_gguf(path: str | Path):
    """(LlamaConfig, HF-named float32 torch state dict, metadata dict) of a GGUF file we can run.

    Reverses what `export_gguf` does (tensor names, Q/K permutation, quantisation), so the result
    loads into `llmchain.model.llama.Llama`. UserError for a missing file or another architecture.
    """
    import gguf
    import torch

    from llmchain.model.llama import LlamaConfig

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise UserError(f"{path}: architecture {arch!r} is not llama or qwen2")
    tensors = {t.name: _dequantize(t) for t in reader.tensors}
    heads, kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    config = LlamaConfig(
        vocab_size=tensors["token_embd.weight"].shape[0],
        hidden_size=meta[f"{arch}.embedding_length"],
        intermediate_size=meta[f"{arch}.feed_forward_length"],
        num_hidden_layers=meta[f"{arch}.block_count"],
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=meta.get(f"{arch}.attention.key_length"),
        max_position_embeddings=meta[f"{arch}.context_length"],
        rms_norm_eps=meta[f"{arch}.attention.layer_norm_rms_epsilon"],
        rope_theta=meta.get(f"{arch}.rope.freq_base", 10000.0),
        tie_word_embeddings="output.weight" not in tensors,
        model_type=arch,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    state = {}
    for name, arr in tensors.items():
        if arch == "llama" and ".attn_q." in name:
            arr = unpermute_rope(arr, heads)
        elif arch == "llama" and ".attn_k." in name:
            arr = unpermute_rope(arr, kv)
        state[gguf_to_hf_name(name)] = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy
    return config, state, meta


def export_model(
    model_dir: str | Path,
    out: str | Path | None,
    *,
    format: str = "hf",
    dtype: str | None = None,
    tokenizer_dir: str | Path | None = None,
) -> dict[str, Any]:
    """`llmchain export`: HF dir or GGUF file (default out: beside the model dir). Returns the summary."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json)")
    if format == "hf":
        dtype = dtype or "f32"
        return export_hf(model_dir, out or model_dir.with_name(f"{model_dir.name}-hf"), dtype=dtype,
                         tokenizer_dir=tokenizer_dir)  # fmt: skip
    if format == "gguf":
        dtype = dtype or "f16"
        out = Path(out) if out else model_dir.with_name(f"{model_dir.name}-{dtype}.gguf")
        if out.is_dir():
            out = out / f"model-{dtype}.gguf"
        return export_gguf(model_dir, out, dtype=dtype, tokenizer_dir=tokenizer_dir)
    raise UserError(f"--format {format}: choose hf or gguf")


def write_export_manifest(out_dir: Path, model_dir: Path, summary: dict[str, Any]) -> None:
    """manifest.json for a dir that holds a GGUF export (the recipe's export stage)."""
    write_manifest(out_dir, "model-gguf", inputs={"model": model_dir}, config=summary, hash_inputs=True)
