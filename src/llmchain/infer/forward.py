"""The engine's batch-invariant forward step over a `Llama` and its slot KV cache.

`step_logits` computes, in one pass, the next-token logits of every decoding sequence and of every
newly admitted prompt. CPU matmul kernels sum in different orders for different row counts (fp32:
M = 1 takes a GEMV path and MKL's blocking changes with M; bf16: oneDNN's AMX kernel changes above
~32 rows), and MKL's matmul over the keys (p·V) blocks its sum differently once there are more than
256 keys. So:

  * bf16 (the default on CPUs with AMX): every linear layer runs on oneDNN-prepacked bf16 weights,
    decoding rows in calls of at most 32 rows (16 where a start-up probe finds 32 unsafe), for which
    the kernel computes each row the same way whatever M is — a lone sequence pays for one row, not
    thirty-two — and all prompts' rows packed into calls of 64, 96, ... 224 rows (padded), the kernel's
    second regime, in which a row's numbers depend neither on M nor on where the row sits (each size
    probed; without the regime each prompt gets one call of its own);
  * fp32: all of a step's tokens are stacked and padded to a multiple of 16 rows (one MKL call).

Decoding attention: with the C kernels (infer/kernels.py; bf16 KV cache) each sequence reads only its
own positions, in one fixed order; in PyTorch (fp32 cache) the key length is padded to a multiple of
16 (masked keys then add exact zeros) and p·V is summed in fixed blocks of 256 keys. Each prompt
attends on its own. Then no token's numbers depend on what else shares the step
(tests/test_serve_engine.py).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmchain.infer.kernels import CpuKernels

log = logging.getLogger("llmchain.infer")
ROW_PAD, KEY_PAD = 16, 16
KEY_BLOCK = 256  # p·V over at most this many keys per matmul: one summation order for any key length
# bf16: the most rows per oneDNN call for which every row is computed the same way. oneDNN's AMX
# kernel keeps one reduction order up to ~32 rows on the shapes we measured (above that it may split
# K); each weight shape is probed at start-up (`_row_chunk`) and falls back to 16 if 32 disagrees.
ROW_CHUNKS = (32, 16)


def _has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False


def _onednn_bf16() -> bool:
    """Whether this PyTorch build's oneDNN has bf16 kernels for this CPU (AVX-512 or AMX)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def bf16_supported() -> bool:
    """Whether this CPU runs oneDNN's bf16 AMX kernels (the row-invariance of small calls, ≤ 16 or 32
    rows, was verified on those; other bf16 paths are not assumed to share it).

    On a CPU with AMX a failed probe is logged as a warning with its cause: it means decoding runs on
    the ~2.5× slower fp32 path, which nobody should learn from a benchmark."""
    if not _has_amx():
        return False
    try:
        if not _onednn_bf16():
            reason = "this PyTorch build has no oneDNN bf16 support"
        else:
            # The ops are internal to PyTorch: probe them once so a changed signature falls back to fp32.
            # Fixed inputs (own generator) and a relative-norm check: an element-wise tolerance on random
            # inputs failed for ~1 % of seeds (bf16 rounding near zero), so a server sometimes fell back
            # to the fp32 path at random.
            g = torch.Generator().manual_seed(0)
            w, x = torch.randn(32, 64, generator=g), torch.randn(3, 64, generator=g)
            y, ref = _Linear(w, None, bf16=True)(x).float(), F.linear(x, w)
            err = float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref))
            if err <= 0.02:
                return True
            reason = f"the bf16 probe's relative error is {err:.3g} (> 0.02)"
    except Exception as e:  # noqa: BLE001 — a capability probe: any failure means "use the fp32 path"
        reason = f"the bf16 probe failed: {type(e).__name__}: {e}"
    log.warning("the CPU has AMX but bf16 decoding is OFF (%s): the engine runs in fp32, about 2.5x "
                "slower. Check the torch version (oneDNN's mkldnn ops) or pass --dtype float32 to silence this.",
                reason)
    return False


def use_bf16(dtype: str, device: torch.device, weight_dtype: torch.dtype) -> bool:
    """Whether the engine runs its linears in bf16 for `dtype` (auto | bfloat16 | float32): auto picks
    bf16 for fp32 weights on CPUs with AMX (as vLLM serves fp32 checkpoints in half precision — there a
    ≤ 32-row bf16 call costs about what one row costs, so batch invariance needs no padding). Raises
    ValueError for an unknown dtype or bfloat16 where the row-invariant kernels are unavailable."""
    if dtype not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16 or float32, not {dtype!r}")
    if dtype == "float32":
        return False
    supported = device.type == "cpu" and bf16_supported()
    if dtype == "bfloat16" and not supported:
        raise ValueError("dtype bfloat16 needs a CPU with AMX (oneDNN's row-invariant bf16 kernels); "
                         "use auto or float32, or load bf16 weights on a GPU")
    return supported and (dtype == "bfloat16" or weight_dtype == torch.float32)


_CHUNK_BY_SHAPE: dict[tuple[int, int, bool], int] = {}
# bf16 prompt rows: oneDNN's AMX kernel has a second regime above 32 rows in which, on the shapes we
# measured, a row's numbers depend neither on M (up to ~255) nor on the row's place in the call. So all
# of a step's prompt rows are packed into calls of PROMPT_MIN..hi rows, as many calls as needed — far
# cheaper than one call per prompt (each re-reads the weight) — and each prompt's numbers are still
# those it gets alone. Every call is padded to a multiple of PROMPT_STEP rows: oneDNN compiles a kernel
# per distinct M (10-30 ms for a model's shapes), so a few sizes, reused, rather than a new one for
# almost every step. The probe (`_prompt_band`) checks exactly those sizes for each weight shape; where
# they disagree, each prompt keeps one call of its own.
PROMPT_MIN, PROMPT_STEP, PROMPT_MAX = 64, 32, (224, 128)
_BAND_BY_SHAPE: dict[tuple[int, int, bool], int | None] = {}


def _row_chunk(w: torch.Tensor, b: torch.Tensor | None) -> int:
    """The largest of ROW_CHUNKS for which every call of ≤ that many rows on this (prepacked) weight
    gives each row exactly its one-row result — probed once per weight shape on random rows."""
    key = (*w.shape, b is not None)
    if key not in _CHUNK_BY_SHAPE:
        lp = torch.ops.mkldnn._linear_pointwise
        x = torch.randn(max(ROW_CHUNKS), w.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        one = torch.cat([lp(r, w, b, "none", [], "") for r in x.split(1)])
        _CHUNK_BY_SHAPE[key] = next((c for c in ROW_CHUNKS[:-1] if all(
            torch.equal(lp(x[:m], w, b, "none", [], ""), one[:m]) for m in range(2, c + 1))), ROW_CHUNKS[-1])  # fmt: skip
    return _CHUNK_BY_SHAPE[key]


def _prompt_band(w: torch.Tensor, b: torch.Tensor | None) -> int | None:
    """The largest `hi` of PROMPT_MAX for which PROMPT_MIN rows come out the same in calls of every
    size the engine uses up to hi (PROMPT_MIN, PROMPT_MIN + PROMPT_STEP, ...), at the start and at the
    end of the call; None if none does."""
    key = (*w.shape, b is not None)
    if key not in _BAND_BY_SHAPE:
        lp = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        lo = PROMPT_MIN
        x = torch.randn(max(PROMPT_MAX), w.shape[1], generator=g).to(torch.bfloat16)
        ref = lp(x[:lo], w, b, "none", [], "")

        def same(m: int) -> bool:
            other = x[lo:m]
            return all(torch.equal(lp(torch.cat(parts), w, b, "none", [], "")[at : at + lo], ref)
                       for parts, at in (((x[:lo], other), 0), ((other, x[:lo]), m - lo)))  # fmt: skip

        sizes = lambda hi: range(lo + PROMPT_STEP, hi + 1, PROMPT_STEP)  # noqa: E731 — the call sizes up to hi
        _BAND_BY_SHAPE[key] = next((hi for hi in PROMPT_MAX if all(same(m) for m in sizes(hi))), None)
    return _BAND_BY_SHAPE[key]


class _Linear:
    """y = x Wᵀ + b on fp32 weights (one call), or on oneDNN-prepacked bf16 weights in batch-invariant
    calls (then y is bf16; the caller adds it to its fp32 residual stream)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, bf16: bool):
        self.bf16 = bf16
        if bf16:
            self.w = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(torch.bfloat16).contiguous(),
                                                             max(ROW_CHUNKS))  # fmt: skip
            self.b = None if b is None else b.detach().to(torch.bfloat16).contiguous()
            self.rows = _row_chunk(self.w, self.b)
            self.band = _prompt_band(self.w, self.b)
        else:
            self.w, self.b = w, b

    def _calls(self, segments: list[int] | None, n: int) -> list[tuple[int, int, int]]:
        """(start, stop, padding rows) of the calls that compute n rows: the first segment (decoding
        rows, one token per sequence) in calls of at most `self.rows`; the later segments (one prompt
        each) packed together into calls of PROMPT_MIN..band rows (a multiple of PROMPT_STEP, padded),
        or one call per prompt where this weight has no band."""
        first = n if segments is None else segments[0]
        out = [(i, min(i + self.rows, first), 0) for i in range(0, first, self.rows)]
        if first == n:
            return out
        if self.band is None:
            for size in segments[1:]:
                out.append((first, first + size, 0))
                first += size
            return out
        rows = n - first
        k = -(-rows // self.band)  # as few calls as fit, of (nearly) equal size, padded to a PROMPT_STEP multiple
        for j in range(k):
            a, z = first + rows * j // k, first + rows * (j + 1) // k
            size = max(PROMPT_MIN, -(-(z - a) // PROMPT_STEP) * PROMPT_STEP)
            out.append((a, z, size - (z - a)))
        return out

    @staticmethod
    def _rows(x: torch.Tensor, a: int, z: int, pad: int) -> torch.Tensor:
        return x[a:z] if not pad else F.pad(x[a:z], (0, 0, 0, pad))

    def __call__(self, x: torch.Tensor, act: str = "none", segments: list[int] | None = None) -> torch.Tensor:
        """x Wᵀ + b, then `act` ("swish" = SiLU; bf16 only: oneDNN applies it in the GEMM's epilogue).
        `segments` (bf16): row counts [decoding rows, prompt 1, prompt 2, ...] summing to len(x)."""
        if not self.bf16:
            return F.linear(x, self.w, self.b)
        lp, x = torch.ops.mkldnn._linear_pointwise, x.to(torch.bfloat16)
        calls = self._calls(segments, x.shape[0])
        if len(calls) == 1 and not calls[0][2]:
            return lp(x, self.w, self.b, act, [], "")
        out = [lp(self._rows(x, a, z, p), self.w, self.b, act, [], "")[: z - a] for a, z, p in calls]
        return torch.cat(out)

    def times(self, x: torch.Tensor, other: torch.Tensor, segments: list[int] | None = None) -> torch.Tensor:
        """(x Wᵀ + b) · other (bf16), the product fused into the GEMM's epilogue."""
        lp, x = torch.ops.mkldnn._linear_pointwise.binary, x.to(torch.bfloat16)
        calls = self._calls(segments, x.shape[0])
        if len(calls) == 1 and not calls[0][2]:
            return lp(x, other, self.w, self.b, "mul")
        out = [lp(self._rows(x, a, z, p), self._rows(other, a, z, p), self.w, self.b, "mul")[: z - a]
               for a, z, p in calls]  # fmt: skip
        return torch.cat(out)


@dataclass
class DecodeWeights:
    """Per-layer linears (q|k|v fused; gate|up fused in fp32, while bf16 keeps gate and up apart so
    oneDNN fuses SiLU and the product into their GEMMs), the LM head, RoPE tables."""

    qkv: list[_Linear]
    o: list[_Linear]
    gate_up: list[_Linear] | list[tuple[_Linear, _Linear]]
    down: list[_Linear]
    head: _Linear
    cos: torch.Tensor  # (max_len, head_dim)
    sin: torch.Tensor
    bf16: bool
    embed: torch.Tensor  # (vocab, hidden): token embeddings
    norms: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: input and post-attention RMSNorm weights
    final_norm: torch.Tensor
    eps: float
    heads: tuple[int, int, int]  # (query heads, kv heads, head_dim)
    kernels: CpuKernels | None = None  # C attention over a bf16 `BlockedKV` cache, fused add+norm (infer/kernels.py)


def _weights(linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer's weight and bias as its forward applies them. A PEFT LoRA layer (a `base_layer`
    plus adapters, as `finetune sft --lora` trains) gives its base weight plus its active adapters'
    deltas — unless they are merged into it already or disabled."""
    base = getattr(linear, "base_layer", None)
    if base is None or not hasattr(linear, "get_delta_weight"):
        return linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    w = base.weight.detach()
    if not linear.merged and not linear.disable_adapters:
        for name in linear.active_adapters:
            if name in linear.lora_A:
                w = w + linear.get_delta_weight(name).detach()
    return w, None if base.bias is None else base.bias.detach()


def _fuse(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    parts = [_weights(m) for m in linears]
    w = torch.cat([w for w, _ in parts]).contiguous()
    b = torch.cat([b for _, b in parts]).contiguous() if parts[0][1] is not None else None
    return w, b


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


@torch.no_grad()
def prepare_decode(model, max_len: int, bf16: bool = False) -> DecodeWeights:
    """The engine's own copy of `model`'s weights (fused, or prepacked bf16) and RoPE tables up to `max_len`.

    A snapshot: the caller's model is neither changed nor referenced afterwards, so it may go on
    training (or be freed) while the engine serves what it was given.
    """
    qkv, o, gate_up, down, norms = [], [], [], [], []
    own = (lambda t: t) if bf16 else _copy  # bf16 prepacking makes its own copies already
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        qkv.append(_Linear(*_fuse([a.q_proj, a.k_proj, a.v_proj]), bf16))
        if bf16:
            gate_up.append(tuple(_Linear(*_weights(p), bf16) for p in (m.gate_proj, m.up_proj)))
        else:
            gate_up.append(_Linear(*_fuse([m.gate_proj, m.up_proj]), bf16))
        o.append(_Linear(*map(own, _weights(a.o_proj)), bf16))
        down.append(_Linear(*map(own, _weights(m.down_proj)), bf16))
        norms.append((_copy(layer.input_layernorm.weight), _copy(layer.post_attention_layernorm.weight)))
    head = _Linear(*map(own, _weights(model.lm_head)), bf16)
    a0 = model.model.layers[0].self_attn
    # RoPE tables computed here (HF's formula) rather than through the model's rotary module, so the
    # engine depends only on the inv_freq buffer, not on how the model lays out its tables.
    inv_freq = model.model.rotary_emb.inv_freq.float()
    freqs = torch.arange(max_len, device=inv_freq.device).float()[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return DecodeWeights(qkv, o, gate_up, down, head, emb.cos(), emb.sin(), bf16,
                         embed=_copy(model.model.embed_tokens.weight), norms=norms,
                         final_norm=_copy(model.model.norm.weight), eps=model.config.rms_norm_eps,
                         heads=(a0.n_heads, a0.n_kv, a0.head_dim))


class KVCache:
    """The fp32 path's cache: keys/values for `slots` sequences of up to `max_len` tokens, per layer,
    each (slots, num_key_value_heads, max_len, head_dim); a sequence owns a slot and writes its tokens
    at their positions (the C kernels' bf16 cache is `kernels.BlockedKV`)."""

    def __init__(self, config, slots: int, max_len: int, device=None, dtype=torch.float32):
        shape = (slots, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.slots, self.max_len = slots, max_len


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2  # HF's rotate_half convention: the first half pairs with the second
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q (B, nh, hd), one query per sequence, over keys/values (B, nkv, L, hd) with `bias` (B, 1, 1, L)
    0 or -inf; → (B, nh·hd). Two batched matmuls and a softmax: PyTorch's CPU flash kernel costs
    ~40 µs per (sequence, head) for a single query; this costs a few µs."""
    B, nh, hd = q.shape
    nkv = keys.shape[1]
    qg = q.reshape(B, nkv, nh // nkv, hd) * (1.0 / math.sqrt(hd))  # query heads grouped by kv head (GQA)
    p = torch.softmax(torch.matmul(qg, keys.transpose(-1, -2)) + bias, dim=-1)
    y = torch.matmul(p[..., :KEY_BLOCK], values[:, :, :KEY_BLOCK])
    for c in range(KEY_BLOCK, p.shape[-1], KEY_BLOCK):  # later blocks of a shorter row's keys add exact zeros
        y += torch.matmul(p[..., c : c + KEY_BLOCK], values[:, :, c : c + KEY_BLOCK])
    return y.reshape(B, nh * hd)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, rows - x.shape[0])) if rows > x.shape[0] else x


def step_logits(cache, w: DecodeWeights, tokens, positions, slots, prompts: list[tuple[list[int], int]],
                pad: bool = True, contiguous: bool = False) -> torch.Tensor:
    """One engine step: next-token logits for B decoding sequences (rows 0..B-1: one token each at its
    own (slot, position)) and for P new prompts (rows B..B+P-1: each prefilled into its slot).

    Batch-invariant by construction (see the module docstring): no token's numbers depend on what
    else shares the step. `pad=False` (batch size 1) skips the fp32 row padding, as nothing can
    share the step. `contiguous=True` says `slots` is 0..B-1 in order: decoding then attends over a
    view of the cache instead of a gathered copy of it (the same numbers, without the copy).
    """
    B = tokens.shape[0]
    dev = tokens.device
    lens = [len(p) for p, _ in prompts]
    ids = torch.cat([tokens] + [torch.tensor(p, dtype=torch.long, device=dev) for p, _ in prompts])
    pos = torch.cat([positions] + [torch.arange(n, device=dev) for n in lens])
    N = ids.shape[0]
    rows = -(-N // ROW_PAD) * ROW_PAD if pad and not w.bf16 else N
    segs = [B, *lens]  # bf16: decoding rows in ≤ 32-row calls, prompt rows packed (see _Linear._calls)
    if B and w.kernels is not None:  # the kernel: each row reads only its own positions 0..pos
        lens_b = positions + 1
    elif B:
        L = min(-(-(int(positions.max()) + 1) // KEY_PAD) * KEY_PAD, cache.max_len)
        bias = torch.zeros(B, 1, 1, L, device=dev).masked_fill_(
            (torch.arange(L, device=dev)[None, :] > positions[:, None])[:, None, None, :], float("-inf"))
        # where each decoding token's key/value goes in a (slots·nkv·max_len, hd) view of a layer's cache
        nkv0, T = cache.k[0].shape[1], cache.k[0].shape[2]
        at = (((slots * nkv0)[:, None] + torch.arange(nkv0, device=dev)) * T + positions[:, None]).flatten()
    if w.kernels is not None:  # each row's cache slot (its position is in `pos`): the C RoPE writes the cache
        row_slots = torch.cat([slots] + [torch.full((len(p),), slot, device=dev) for p, slot in prompts])
    else:
        cos, sin = w.cos[pos][:, None], w.sin[pos][:, None]  # (N, 1, hd)
    x = _pad_rows(F.embedding(ids, w.embed).float(), rows)  # (rows, hidden), the fp32 residual stream
    eps = w.eps
    # logits only where a next token is needed: every decoding row, and each prompt's last token
    last = torch.tensor(list(range(B)) + [B + sum(lens[: j + 1]) - 1 for j in range(len(lens))], device=dev)
    out_rows = -(-last.shape[0] // ROW_PAD) * ROW_PAD if pad and not w.bf16 else last.shape[0]

    def add_norm(x: torch.Tensor, res: torch.Tensor | None, weight: torch.Tensor):
        """x + res (a linear's output not yet added to the residual stream), and its RMSNorm."""
        if w.kernels is not None:  # one C pass: x updated in place, the norm written in bf16
            return x, w.kernels.add_rms_norm(x, res, weight, eps)
        x = x if res is None else x + res
        return x, F.rms_norm(x, (x.shape[-1],), weight, eps)

    res = None
    nh, nkv, hd = w.heads
    n_layers = len(w.qkv)
    for i in range(n_layers):
        # The last layer writes every prompt token's key/value, but only those rows go on past attention
        # (a prompt's last query attends alone): the rest of a prompt's rows would feed no logit.
        prune = bool(prompts) and i == n_layers - 1
        x, h = add_norm(x, res, w.norms[i][0])
        qkv = w.qkv[i](h, segments=segs)[:N]
        kc, vc = cache.k[i], cache.v[i]
        ys = []
        if w.kernels is not None:  # RoPE, q's scale and the cache write in one C pass over the bf16 q|k|v
            q, k, v = w.kernels.rope_write(qkv, w.cos, w.sin, pos, row_slots, kc, vc, 1.0 / math.sqrt(hd), B,
                                           kv_out=bool(prompts))  # fmt: skip
            if B:
                ys.append(w.kernels.attention(q[:B], kc, vc, slots, lens_b))
        else:
            qkv = qkv.float().view(N, nh + 2 * nkv, hd)
            qk = _rope(qkv[:, : nh + nkv], cos, sin)  # q and k heads rotated together
            q, k, v = qk[:, :nh], qk[:, nh:], qkv[:, nh + nkv :]
            if B:
                kc.view(-1, hd).index_copy_(0, at, k[:B].reshape(-1, hd).to(kc.dtype))
                vc.view(-1, hd).index_copy_(0, at, v[:B].reshape(-1, hd).to(vc.dtype))
                if contiguous:
                    keys, values = kc[:B, :, :L], vc[:B, :, :L]
                else:
                    keys, values = kc[:, :, :L].index_select(0, slots), vc[:, :, :L].index_select(0, slots)
                ys.append(_decode_attention(q[:B], keys.to(qk.dtype), values.to(qk.dtype), bias))
        start = B
        for (_, slot), n in zip(prompts, lens, strict=True):  # each prompt attends on its own
            kp, vp = k[start : start + n].transpose(0, 1), v[start : start + n].transpose(0, 1)  # (nkv, n, hd)
            if w.kernels is None:  # (the C pass wrote it already)
                kc[slot, :, :n], vc[slot, :, :n] = kp.to(kc.dtype), vp.to(vc.dtype)
            qp = q[start + (n - 1 if prune else 0) : start + n].transpose(0, 1)[None]  # (1, nh, n or 1, hd)
            y = F.scaled_dot_product_attention(qp, kp[None], vp[None], is_causal=n > 1 and not prune,
                                               enable_gqa=nkv != nh)  # fmt: skip
            ys.append(y[0].transpose(0, 1).reshape(-1, nh * hd))
            start += n
        if prune:
            x, rows, segs = _pad_rows(x.index_select(0, last), out_rows), out_rows, [last.shape[0]]
        res = w.o[i](_pad_rows(torch.cat(ys) if len(ys) > 1 else ys[0], rows), segments=segs)
        x, h = add_norm(x, res, w.norms[i][1])
        if w.bf16:
            gate, up, hb = *w.gate_up[i], h.to(torch.bfloat16)
            act = up.times(hb, gate(hb, "swish", segs), segs)
        else:
            gate, up = w.gate_up[i](h).chunk(2, dim=-1)
            act = F.silu(gate) * up
        res = w.down[i](act, segments=segs)
    # rows: every decoding row (padded in fp32), then each prompt's last row (the last layer kept no others)
    _, h = add_norm(x, res, w.final_norm)
    return w.head(h)[: last.shape[0]].float()


def copy_prefix(cache, dst: int, src: int, n: int) -> None:
    """Positions 0..n-1 of slot `src` into slot `dst`, in every layer (a `KVCache` or a `BlockedKV`)."""
    if hasattr(cache, "copy_prefix"):
        return cache.copy_prefix(dst, src, n)
    for k, v in zip(cache.k, cache.v, strict=True):
        k[dst, :, :n] = k[src, :, :n]
        v[dst, :, :n] = v[src, :, :n]
