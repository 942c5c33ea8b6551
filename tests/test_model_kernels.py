"""The hand-written CPU training kernels (model/autograd.py) against autograd of the plain forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmchain.model import autograd
from llmchain.model.autograd import CausalMatmulAttention, Rotary
from llmchain.model.llama import Llama, LlamaConfig, RotaryEmbedding, rotate_half


def _cos_sin(T: int, D: int, dtype=torch.float64):
    cos, sin = RotaryEmbedding(D, 10000.0)(torch.arange(T)[None])
    return cos.to(dtype), sin.to(dtype)  # (1, 1, T, D): broadcast over batch and heads


def test_rotary_matches_hf_form_and_its_gradient_is_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = _cos_sin(7, 8)
    hf = x * cos + rotate_half(x) * sin
    ours = Rotary.apply(x, cos, sin)
    torch.testing.assert_close(ours, hf, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: Rotary.apply(t, cos, sin), (x,))


def test_causal_matmul_attention_equals_sdpa_and_passes_gradcheck():
    torch.manual_seed(0)
    B, H, KV, T, D = 2, 4, 2, 6, 8
    q = torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, KV, T, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, KV, T, D, dtype=torch.float64, requires_grad=True)
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1), is_causal=True
    )
    ours = CausalMatmulAttention.apply(q * D**-0.5, k, v)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b, c: CausalMatmulAttention.apply(a, b, c), (q, k, v))


def _tiny_model_and_batch() -> tuple[Llama, torch.Tensor]:
    """A seeded 2-layer GQA Llama in training mode and a (4, 33) batch of token ids."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return Llama(cfg).train(), torch.randint(0, 256, (4, 33))


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x[:, :-1], x[:, 1:])[1]
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_bf16_training_gradients_match_the_sdpa_path(monkeypatch):
    model, x = _tiny_model_and_batch()
    calls = []
    real = autograd.CausalMatmulAttention.apply
    monkeypatch.setattr(autograd.CausalMatmulAttention, "apply", lambda *a: calls.append(1) or real(*a))
    loss_mm, g_mm = _grads(model, x)
    assert calls, "the bf16 CPU training path did not use CausalMatmulAttention"
    monkeypatch.setattr(autograd, "MATMUL_ATTENTION_MAX_SCORES", 0)  # force SDPA
    n = len(calls)
    loss_sdpa, g_sdpa = _grads(model, x)
    assert len(calls) == n
    assert abs(loss_mm - loss_sdpa) < 1e-2
    for name, g in g_sdpa.items():
        rel = float((g_mm[name] - g).norm() / g.norm().clamp_min(1e-12))
        assert rel < 0.05, f"{name}: relative gradient difference {rel:.3f}"


def test_compiled_bf16_training_matches_eager():
    # compiled, bf16 CPU attention still goes through CausalMatmulAttention (inductor traces the Function)
    model, x = _tiny_model_and_batch()
    loss_eager, g_eager = _grads(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    loss_c, g_c = _grads(compiled, x)
    assert abs(loss_eager - loss_c) < 1e-3
    for name, g in g_eager.items():
        rel = float((g_c["_orig_mod." + name] - g).norm() / g.norm())  # torch.compile wraps the module
        assert rel < 0.03, f"{name}: relative gradient difference {rel:.3f}"


def test_cross_entropy_sum_equals_f_cross_entropy_and_passes_gradcheck():
    from llmchain.model.autograd import CrossEntropySum

    torch.manual_seed(0)
    t = torch.randint(0, 300, (700,))
    t[::7] = -100  # ignored positions: no loss, no gradient
    for dtype in (torch.float32, torch.bfloat16):  # bf16: logits under autocast, the loss in fp32
        x = (torch.randn(700, 300) * 3).to(dtype).requires_grad_()
        ours = CrossEntropySum.apply(x, t)
        (0.5 * ours).backward()
        g_ours, x.grad = x.grad, None
        ref = F.cross_entropy(x.float(), t, ignore_index=-100, reduction="sum")
        (0.5 * ref).backward()
        assert ours.dtype == torch.float32 and g_ours.dtype == dtype
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
        torch.testing.assert_close(g_ours, x.grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-3)
        assert not g_ours[::7].any()
    x = torch.randn(50, 20, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 20, (50,))
    t[3] = -100
    assert torch.autograd.gradcheck(lambda a: CrossEntropySum.apply(a, t), (x,))
    with pytest.raises(IndexError):
        CrossEntropySum.apply(x, torch.full((50,), 20))


def test_training_loss_equals_hf_cross_entropy():
    model, x = _tiny_model_and_batch()
    y = x[:, 1:].clone()
    y[0, :5] = -100
    logits, loss = model(x[:, :-1], y)
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
