"""Export: the HF dir loads in transformers with equal logits; the GGUF file reads back with the same
tensors (f32 exactly, f16/q8_0 within their rounding), llama.cpp's metadata and the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli
from llmchain.model.export import export_gguf, export_hf, permute_rope, read_gguf, unpermute_rope
from llmchain.model.llama import Llama, apply_rotary

CORPUS = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    # model vocab 320 > tokenizer's 300: padded ids must become [PAD] tokens; GQA (nano: 4 heads, 2 kv heads)
    return tiny_model_dir(CORPUS, 300, model_vocab=320, intermediate_size=96, max_position_embeddings=64,
                          rope_theta=5000.0, eos_token_id=0, bos_token_id=0, pad_token_id=1)  # fmt: skip


def _load_ours(config, state) -> Llama:
    m = Llama(config)
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config.tie_word_embeddings:
        m.lm_head.weight = m.model.embed_tokens.weight
    return m.eval()


def test_hf_export_loads_in_transformers_with_equal_logits(model_dir, tmp_path):
    import transformers

    from llmchain.model.io import load_model

    export_hf(model_dir, tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {
        "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok.encode("To be, or not to be")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, load_model(model_dir)(ids)[0], atol=1e-5, rtol=0)
    assert tok.decode(ids[0]) == "To be, or not to be" and tok.eos_token == "<|endoftext|>"


def test_hf_export_f16_and_bad_dtype(model_dir, tmp_path):
    import json

    export_hf(model_dir, tmp_path / "hf16", dtype="f16")
    assert json.loads((tmp_path / "hf16/config.json").read_text())["torch_dtype"] == "float16"
    code, out, err = run_cli("export", str(model_dir), "--format", "hf", "--dtype", "q8_0", "--out", str(tmp_path / "x"))
    assert code == 2 and "q8_0 is GGUF only" in err


def test_gguf_f32_reads_back_exactly_with_llama_metadata(model_dir, tmp_path):
    from safetensors.torch import load_file

    export_gguf(model_dir, tmp_path / "m.gguf", dtype="f32")
    config, state, meta = read_gguf(tmp_path / "m.gguf")
    source = load_file(model_dir / "model.safetensors")
    assert set(state) == set(source)  # tied: no output.weight in either
    for name, t in source.items():
        assert torch.equal(state[name], t), name
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 0
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.context_length"] == 64 and meta["llama.rope.freq_base"] == 5000.0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 320 and tokens[:4] == ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    assert tokens[310] == "[PAD310]" and meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 3]
    assert meta["tokenizer.ggml.token_type"][310] == 5 and meta["tokenizer.ggml.token_type"][100] == 1
    assert len(meta["tokenizer.ggml.merges"]) == 300 - 256 - 4
    assert meta["tokenizer.ggml.eos_token_id"] == 0 and meta["tokenizer.ggml.padding_token_id"] == 1
    assert meta["tokenizer.ggml.eot_token_id"] == 3 and "<|im_start|>" in meta["tokenizer.chat_template"]
    assert config.num_key_value_heads == 2 and config.tie_word_embeddings


@pytest.mark.parametrize("dtype, atol", [("f16", 2e-3), ("q8_0", 3e-2)])
def test_gguf_f16_q8_0_dequantise_within_tolerance(model_dir, tmp_path, dtype, atol):
    from safetensors.torch import load_file

    from llmchain.model.io import load_model

    summary = export_gguf(model_dir, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    f32 = export_gguf(model_dir, tmp_path / "m32.gguf", dtype="f32")
    assert summary["bytes"] < f32["bytes"] * (0.55 if dtype == "f16" else 0.4)
    config, state, meta = read_gguf(tmp_path / f"m-{dtype}.gguf")
    source = load_file(model_dir / "model.safetensors")
    for name, t in source.items():
        err = (state[name] - t).abs().max().item()
        if t.ndim == 1:
            assert err == 0, name  # norms stay f32
        else:
            assert err <= (t.abs().max().item() / 127 * 0.6 if dtype == "q8_0" else 1e-3), (name, err)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(_load_ours(config, state)(ids)[0], load_model(model_dir)(ids)[0], atol=atol, rtol=0)


def test_qk_permutation_turns_rotate_half_rope_into_interleaved_rope():
    # llama.cpp's (non-NeoX) RoPE rotates adjacent pairs (x0, x1); HF's rotates (x_i, x_{i+d/2}). The
    # permuted projection with interleaved RoPE must give the same attention scores as HF's.
    torch.manual_seed(0)
    heads, d, hidden, T = 2, 8, 16, 5
    wq, wk, x = torch.randn(heads * d, hidden), torch.randn(heads * d, hidden), torch.randn(T, hidden)
    pos = torch.arange(T, dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    ang = pos[:, None] * inv[None]  # (T, d/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def hf_scores():
        q, k = (x @ wq.T).view(T, heads, d).transpose(0, 1), (x @ wk.T).view(T, heads, d).transpose(0, 1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q @ k.transpose(-1, -2)

    def interleaved(v):  # (heads, T, d): rotate pairs (0,1), (2,3), ...
        a, b = v[..., 0::2], v[..., 1::2]
        c, s = ang.cos(), ang.sin()
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)

    pq = torch.from_numpy(permute_rope(wq.numpy(), heads))
    pk = torch.from_numpy(permute_rope(wk.numpy(), heads))
    q, k = (x @ pq.T).view(T, heads, d).transpose(0, 1), (x @ pk.T).view(T, heads, d).transpose(0, 1)
    torch.testing.assert_close(interleaved(q) @ interleaved(k).transpose(-1, -2), hf_scores(), atol=1e-4, rtol=1e-4)
    assert np.array_equal(unpermute_rope(permute_rope(wq.numpy(), heads), heads), wq.numpy())


def test_export_cli_gguf_and_errors(model_dir, tmp_path):
    code, out, err = run_cli("export", str(model_dir), "--format", "gguf", "--dtype", "q8_0",
                             "--out", str(tmp_path / "m.gguf"))  # fmt: skip
    assert code == 0, err
    assert "read back and checked" in out and (tmp_path / "m.gguf").stat().st_size > 0
    (tmp_path / "notok").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "notok" / name).write_bytes((model_dir / name).read_bytes())
    code, out, err = run_cli("export", str(tmp_path / "notok"), "--format", "gguf", "--out", str(tmp_path / "b.gguf"))
    assert code == 2 and "no tokenizer.json" in err
    code, out, err = run_cli("export", str(tmp_path / "nothing"), "--format", "gguf")
    assert code == 2 and "not a model directory" in err


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_loads_in_transformers_gguf_reader_with_same_logits_and_tokens(model_dir, tmp_path, dtype):
    # transformers' GGUF loader is an independent implementation of llama.cpp's conventions: it undoes the
    # Q/K permutation, dequantises, and rebuilds the tokenizer from the tokenizer.ggml.* keys.
    import transformers

    from llmchain.model.io import load_model

    export_gguf(model_dir, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"m-{dtype}.gguf",
                                                           dtype=torch.float32).eval()  # fmt: skip
    config, state, _ = read_gguf(tmp_path / f"m-{dtype}.gguf")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = load_model(model_dir)(ids)[0] if dtype == "f32" else _load_ours(config, state)(ids)[0]
        torch.testing.assert_close(hf(ids).logits, reference, atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"m-{dtype}.gguf")
    ref = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "To be, or not to be: 你好 <|im_start|>user\nhi<|im_end|>"
    assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
