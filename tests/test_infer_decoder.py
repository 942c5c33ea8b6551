"""The fused C decode step (infer/decoder.py, decode.c): its logits against the PyTorch step (fp32 tightly, bf16
and int8 within their rounding), each row bit-identical alone, in any batch and on any thread count, in its
AVX-512 and its portable build; the packed weight layout; int8 greedy text mostly that of fp32 on a trained model; the engine falls
back to PyTorch where the step cannot be built, and --weights int8 then fails clearly."""

from __future__ import annotations

import pytest
import torch

from llmchain.infer import decoder as dec
from llmchain.infer.engine import Engine
from llmchain.infer.forward import KVCache, prepare_decode, step_logits
from llmchain.infer.sampling import SamplingParams
from llmchain.model.llama import Llama, LlamaConfig

# 176 = 11·16: the int8 activations' last 64-value chunk is partial, and (with 2·176 gate|up rows) a
# matmul's columns are not a multiple of 8; vocab 302 neither.
CFG = dict(vocab_size=302, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=160)
NONE = torch.zeros(0, dtype=torch.long)
TOL = {"float32": 1e-4, "bfloat16": 2e-2, "int8": 5e-2}  # max |logit error| / max |logit|, measured ~1e-7/3e-3/1e-2


class _Tok:
    eos_token_id = 301

    def decode(self, ids, **_):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def get_vocab(self):
        return {}


def _model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**CFG)).eval()


def _prefilled(model, prompts):
    """Decode weights and two caches holding the same prefilled prompts (one for each path)."""
    w = prepare_decode(model, 160)
    caches = [KVCache(model.config, 8, 160) for _ in range(2)]
    with torch.inference_mode():
        for c in caches:
            step_logits(c, w, NONE, NONE, NONE, [(p, s) for s, p in enumerate(prompts)])
    return w, caches


@pytest.mark.parametrize("generic", [False, True], ids=["native", "generic"])
@pytest.mark.parametrize("weights", ["float32", "bfloat16", "int8"])
def test_fused_step_matches_pytorch_and_rows_do_not_depend_on_the_batch(weights, generic):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 302, (n,), generator=g).tolist() for n in (5, 1, 40, 17, 90, 3, 64)]
    w, (ref_cache, cache) = _prefilled(_model(), prompts)
    d = dec.load_decoder(w, cache, weights, threads=2, generic=generic)
    if d is None:
        pytest.skip("no C compiler: the fused decode step cannot be built here")
    assert d.isa == "generic" if generic else d.isa != ""
    B = len(prompts)
    tokens, positions, slots = torch.randint(0, 302, (B,), generator=g), torch.tensor([len(p) for p in prompts]), \
        torch.arange(B)  # fmt: skip
    with torch.inference_mode():
        ref = step_logits(ref_cache, w, tokens, positions, slots, [])
        got = d.step(tokens, positions, slots)
        # the key and value it wrote are the PyTorch step's (fp32 weights: to rounding)
        if weights == "float32":
            for kr, kg in zip(ref_cache.k + ref_cache.v, cache.k + cache.v, strict=True):
                torch.testing.assert_close(kg, kr, rtol=1e-5, atol=1e-5)
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err < TOL[weights], err
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= (1.0 if weights == "float32" else 0.7)
        # each row alone, in another order, on one thread: bit for bit what it got in the batch
        order = [4, 0, 6, 2]
        d.threads = 1
        again = d.step(tokens[order], positions[order], slots[order])
        assert torch.equal(again, got[order])
        for i in range(B):
            assert torch.equal(d.step(tokens[i : i + 1], positions[i : i + 1], slots[i : i + 1])[0], got[i])


def test_quantize_int8_rounds_each_channel_to_its_own_scale():
    w = torch.tensor([[1.0, -0.5, 0.25], [100.0, 0.0, -100.0]])
    q, s = dec.quantize_int8(w)
    assert q.dtype == torch.int8 and q.tolist() == [[127, -64, 32], [127, 0, -127]]
    torch.testing.assert_close(s, torch.tensor([1 / 127, 100 / 127]))
    assert float((q.float() * s[:, None] - w).abs().max()) <= float(s.max()) / 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_pack_lays_out_tiles_of_8_columns_by_64_byte_blocks_then_the_rest_as_is(dtype):
    n, k = 19, 40  # 2 tiles of 8 and 3 tail rows; k pads to one block of 64 bytes (bf16: to 64 values)
    w = (torch.arange(n * k) % 101 + 1).view(n, k).to(dtype)
    e = 64 // w.element_size()
    kp = -(-k // e) * e
    p = dec.pack(w)
    assert p.dtype == dtype and p.numel() == 16 * kp + 3 * k
    for j in range(16):  # column j's block b starts at tile(j) + b·8e + (j % 8)·e; padding is zeros
        for b in range(kp // e):
            at = j // 8 * 8 * kp + b * 8 * e + j % 8 * e
            block = p[at : at + e]
            assert torch.equal(block[: max(0, min(e, k - b * e))], w[j, b * e : (b + 1) * e])
            assert not block[max(0, k - b * e) :].any()
    assert torch.equal(p[16 * kp :], w[16:].reshape(-1))


def _trained(steps: int = 120) -> Llama:
    """A tiny Llama trained on a cyclic byte pattern: its greedy continuations are confident, not noise."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**CFG))
    text = b"the quick brown fox jumps over the lazy dog; " * 40
    data = torch.tensor(list(text))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (8,))
        batch = torch.stack([data[s : s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_int8_greedy_text_mostly_matches_fp32_on_a_trained_model():
    model = _trained()
    prompts = [list(b"the quick "), list(b"over the la"), list(b"fox jumps"), list(b"dog; the")]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    out = {}
    for weights in ("float32", "int8"):
        engine = Engine(model, _Tok(), max_batch_size=4, weights=weights, eos_token_ids=[])
        if engine.decoder is None:
            pytest.skip("no C compiler: the fused decode step cannot be built here")
        out[weights] = [c[0].token_ids for c in engine.generate(prompts, params)]
    same = sum(a == b for x, y in zip(out["float32"], out["int8"], strict=True) for a, b in zip(x, y, strict=True))
    assert same / (24 * len(prompts)) >= 0.9, (out, same)
    assert bytes(out["float32"][0]).startswith(b"brown fox")  # trained: fp32 continues the pattern


def test_engine_decodes_with_pytorch_where_the_step_cannot_be_built(monkeypatch):
    model = _model(2)
    prompts, params = [[10, 20, 30], [7, 8]], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    fused = Engine(model, _Tok(), max_batch_size=2, dtype="float32", eos_token_ids=[])
    monkeypatch.setenv("LLMCHAIN_C_KERNELS", "0")
    dec._library.cache_clear()
    try:
        plain = Engine(model, _Tok(), max_batch_size=2, dtype="float32", eos_token_ids=[])
        assert plain.decoder is None
        with pytest.raises(ValueError, match="weights int8 needs the fused decode step"):
            Engine(model, _Tok(), max_batch_size=2, weights="int8")
    finally:
        dec._library.cache_clear()
    if fused.decoder is None:
        pytest.skip("no C compiler: nothing to compare the PyTorch path with")
    a = [c[0].token_ids for c in fused.generate(prompts, params)]
    assert a == [c[0].token_ids for c in plain.generate(prompts, params)]  # fp32 weights: the same greedy text
