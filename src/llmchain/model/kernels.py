"""CPU training kernels for `llama.py`: hand-written backwards where PyTorch's eager kernels are slow.

Used only in training on CPU (never for inference or the KV cache): `Rotary` (RoPE on the two halves,
no `cat`; eager only — compiled, inductor fuses the plain form) and `CausalMatmulAttention` (bf16
causal GQA attention as batched matmuls that keeps its probabilities for the backward; eager and
compiled — inductor's CPU attention has the same fp32, recomputing backward as the eager kernel). Each is checked against autograd of
the plain form in tests/test_model_kernels.py (gradcheck in fp64; bf16 gradients close to SDPA's).
"""

from __future__ import annotations

import torch


class Rotary(torch.autograd.Function):
    """`apply_rotary` with a hand-written backward, for training in eager mode.

    The same arithmetic as HF's x·cos + rotate_half(x)·sin, but on the two halves in place of a
    `cat`: autograd of the HF form spends a cat forward, a cat backward (of the chunk) and a neg; the
    cats alone took ~15 ms of a ~500 ms fp32 training step of the tiny preset (profiled, 2 threads).
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        h = x.shape[-1] // 2
        c, s = cos[..., :h].to(x.dtype), sin[..., :h].to(x.dtype)  # the two halves of cos/sin are equal
        ctx.save_for_backward(c, s)
        return rotate_halves(x, c, s, sign=1)

    @staticmethod
    def backward(ctx, grad):
        c, s = ctx.saved_tensors
        return rotate_halves(grad, c, s, sign=-1), None, None  # the transpose of a rotation: rotate back


def rotate_halves(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, sign: int) -> torch.Tensor:
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    y = torch.empty_like(x)
    y1, y2 = y[..., :h], y[..., h:]
    torch.mul(x1, c, out=y1).addcmul_(x2, s, value=-sign)  # x1·c − x2·s
    torch.mul(x2, c, out=y2).addcmul_(x1, s, value=sign)  # x2·c + x1·s
    return y


def use_matmul_attention(q: torch.Tensor, k: torch.Tensor, low: torch.dtype) -> bool:
    """Whether to train through `CausalMatmulAttention` instead of SDPA's CPU flash kernel."""
    B, H, T, _ = q.shape
    return (
        q.device.type == "cpu"
        and low == torch.bfloat16
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad)
        and 1 < T <= 1024
        and B * H * T * T <= MATMUL_ATTENTION_MAX_SCORES
    )


MATMUL_ATTENTION_MAX_SCORES = 1 << 26  # 128 MiB of bf16 probabilities kept per layer for the backward
_CAUSAL_MASKS: dict[tuple[int, int], torch.Tensor] = {}


class CausalMatmulAttention(torch.autograd.Function):
    """Causal grouped-query attention as two batched matmuls around a softmax, for CPU training in bf16.

    PyTorch's CPU flash-attention kernel computes in fp32 however it is called, and its backward
    recomputes the scores: at T=256 it was ~30 % of a bf16 training step. Here the four matmuls of
    the backward and the two of the forward run in bf16 (AMX/AVX512-BF16 on recent Xeons) and the
    probabilities are kept for the backward instead of recomputed — (B, H, T, T) bf16, so only for
    short sequences (`use_matmul_attention`). The scores are rounded to bf16 before the softmax,
    as in HF's eager attention under autocast; the softmax and its backward accumulate in fp32.
    Inputs: q (B, H, T, D), already multiplied by the softmax scale; k, v (B, KV, T, D).
    """

    @staticmethod
    def forward(ctx, q, k, v):
        B, H, T, D = q.shape
        kv = k.shape[1]
        # The H / KV query heads that share a kv head stack along the rows: one matmul per kv head,
        # no copies of k/v (rows r and r + T of a group are the same position).
        qg = q.reshape(B, kv, H // kv * T, D)
        key = (H // kv, T)
        if torch.compiler.is_compiling():
            mask = torch.ones(T, T, dtype=torch.bool).triu(1).repeat(H // kv, 1)
        else:
            if key not in _CAUSAL_MASKS:
                _CAUSAL_MASKS[key] = torch.ones(T, T, dtype=torch.bool).triu_(1).repeat(H // kv, 1)
            mask = _CAUSAL_MASKS[key]
        with torch.autocast("cpu", enabled=False):  # inputs are bf16 already; keep p in bf16
            s = torch.matmul(qg, k.transpose(-1, -2)).masked_fill_(mask, float("-inf"))
            p = torch.softmax(s, dim=-1)
            ctx.save_for_backward(qg, k, v, p)
            return torch.matmul(p, v).view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        qg, k, v, p = ctx.saved_tensors
        grad = grad.reshape(qg.shape).to(qg.dtype)
        dv = torch.matmul(p.transpose(-1, -2), grad)  # sums over the query heads of each group
        ds = torch._softmax_backward_data(torch.matmul(grad, v.transpose(-1, -2)), p, -1, p.dtype)
        dq = torch.matmul(ds, k).view(qg.shape[0], -1, k.shape[2], k.shape[3])
        return dq, torch.matmul(ds.transpose(-1, -2), qg), dv
