"""CPU training kernels for `llama.py`: hand-written backwards where PyTorch's eager kernels are slow.

Used only in training on CPU (never for inference or the KV cache): `Rotary` (RoPE on the two halves,
no `cat`; eager only — compiled, inductor fuses the plain form), `CausalMatmulAttention` (bf16 causal
GQA attention as batched matmuls that keeps its probabilities for the backward; eager and compiled —
inductor's CPU attention has the same fp32, recomputing backward as the eager kernel) and
`CrossEntropySum` (the loss without materialising log-probabilities; eager only, on CPU also in
evaluation). Each is checked against autograd of the plain form in tests/test_model_kernels.py
(gradcheck in fp64; bf16 gradients close to SDPA's)."""

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


def _causal_softmax(s: torch.Tensor, T: int, inplace: bool = True) -> torch.Tensor:
    """Softmax over the last dim of scores (..., G·T, T) whose G row blocks of T are each causal."""
    key = (s.shape[-2] // T, T)
    if key not in _CAUSAL_MASKS:
        _CAUSAL_MASKS[key] = torch.ones(T, T, dtype=torch.bool).triu_(1).repeat(key[0], 1)
    fill = s.masked_fill_ if inplace else s.masked_fill
    return torch.softmax(fill(_CAUSAL_MASKS[key], float("-inf")), dim=-1)


@torch.library.custom_op("llmchain::causal_softmax", mutates_args=())
def causal_softmax(s: torch.Tensor, T: int) -> torch.Tensor:
    """`_causal_softmax` as an op that torch.compile calls as it is instead of tracing."""
    return _causal_softmax(s, T, inplace=False)


@causal_softmax.register_fake
def _(s: torch.Tensor, T: int) -> torch.Tensor:
    return torch.empty_like(s)


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
        with torch.autocast("cpu", enabled=False):  # inputs are bf16 already; keep p in bf16
            s = torch.matmul(qg, k.transpose(-1, -2))
            # Compiled, the softmax stays an opaque call of the eager kernel: inductor's fused
            # mask + softmax measured 3.9–4.8 ms per layer against 2.9 ms eager (bf16, tiny preset).
            p = causal_softmax(s, T) if torch.compiler.is_compiling() else _causal_softmax(s, T)
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


class CrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of logits (N, V) against targets (N,) (-100: no loss), a block of rows at a time.

    For CPU training in eager mode. Autograd of `F.cross_entropy` writes the fp32 log-probabilities
    (N × V), zero-fills an (N, V) buffer for the NLL backward and reads both again in the log-softmax
    backward — a dozen passes over the largest activation of a small model. Here the forward keeps
    only each row's log-sum-exp (fp32) and the backward writes softmax − one-hot straight into the
    gradient, one in-cache block of rows at a time: 2048 × 4096 logits, fp32: 27 → ~10 ms per step.
    The same math as `F.cross_entropy(logits.float(), targets, reduction="sum")` up to float rounding.
    """

    @staticmethod
    def forward(ctx, logits, targets):
        valid = targets != -100
        if bool((valid & ((targets < 0) | (targets >= logits.shape[-1]))).any()):
            raise IndexError(f"target out of range for {logits.shape[-1]} classes (and not -100)")
        work = torch.promote_types(logits.dtype, torch.float32)  # fp32 (fp64 stays fp64)
        # Blocks of 2 MiB in one reused buffer: a fresh multi-MiB tensor per block costs page faults.
        rows = max(1, (1 << 19) // logits.shape[-1])
        buf = torch.empty(min(rows, logits.shape[0]), logits.shape[-1], dtype=work)
        lse = torch.empty(logits.shape[0], dtype=work)
        for i in range(0, logits.shape[0], rows):
            c = logits[i : i + rows]
            b = buf[: c.shape[0]]
            if c.dtype != work:  # bf16: one cast into the buffer, then fp32 (a bf16 amax is slow)
                c = b.copy_(c)
            m = c.amax(-1, keepdim=True)
            b = torch.sub(c, m, out=b).exp_()
            torch.add(b.sum(-1).log_(), m.squeeze(1), out=lse[i : i + rows])
        t = torch.where(valid, targets, 0)
        picked = logits.gather(1, t[:, None]).squeeze(1).to(work)
        ctx.save_for_backward(logits, lse, t, valid)
        ctx.rows = rows
        return torch.where(valid, lse - picked, 0.0).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, lse, t, valid = ctx.saved_tensors
        out = torch.empty_like(logits)
        scale = (grad.to(lse.dtype) * valid)[:, None]  # ignored rows get no gradient
        minus_one = torch.full((ctx.rows, 1), -1.0, dtype=lse.dtype)
        inplace = logits.dtype == lse.dtype  # else (bf16) each block is computed in fp32, then rounded
        buf = None if inplace else torch.empty(min(ctx.rows, logits.shape[0]), logits.shape[-1], dtype=lse.dtype)
        for i in range(0, logits.shape[0], ctx.rows):
            j = min(i + ctx.rows, logits.shape[0])
            p = _minus(logits[i:j], lse[i:j, None], out[i:j] if inplace else buf[: j - i]).exp_()
            p.scatter_add_(1, t[i:j, None], minus_one[: j - i]).mul_(scale[i:j])  # softmax − one-hot, × dloss
            if not inplace:
                out[i:j] = p
        return out, None


def _minus(x: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # bf16 x: cast into `out` first — `torch.sub` across dtypes would allocate an fp32 copy of x
    return torch.sub(x, m, out=out) if x.dtype == out.dtype else out.copy_(x).sub_(m)
