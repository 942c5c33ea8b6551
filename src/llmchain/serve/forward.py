"""The engine's batch-invariant forward step over a `Llama` and its slot KV cache.

`step_logits` computes, in one pass, the next-token logits of every decoding sequence and of every
newly admitted prompt. CPU matmul kernels sum in different orders for different row counts (M = 1
takes a GEMV path; MKL's blocking changes with M), and attention's softmax reduces differently when
the key length has a ragged tail; so all of a step's tokens are stacked and padded to a multiple of
16 rows, decoding attention's key length is padded to a multiple of 64, and each prompt attends on
its own. Then no token's numbers depend on what else shares the step (tests/test_serve_engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROW_PAD, KEY_PAD = 16, 64


@dataclass
class DecodeWeights:
    """Per-layer fused projections (q|k|v and gate|up: fewer, larger matmuls) and RoPE tables by position.

    The model's own q/k/v and gate/up weights become views into the fused tensors, so nothing is
    stored twice and `Llama.forward` (used for prefill) keeps working on the same numbers.
    """

    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]
    gate_up: list[tuple[torch.Tensor, torch.Tensor | None]]
    cos: torch.Tensor  # (max_len, head_dim)
    sin: torch.Tensor


def _fuse(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = torch.cat([m.weight.detach() for m in linears]).contiguous()
    b = torch.cat([m.bias.detach() for m in linears]).contiguous() if linears[0].bias is not None else None
    start = 0
    for m in linears:
        n = m.out_features
        m.weight = torch.nn.Parameter(w[start : start + n], requires_grad=False)
        if b is not None:
            m.bias = torch.nn.Parameter(b[start : start + n], requires_grad=False)
        start += n
    return w, b


@torch.no_grad()
def prepare_decode(model, max_len: int) -> DecodeWeights:
    """Fuse `model`'s projections in place (views, no copies kept) and tabulate RoPE up to `max_len`."""
    qkv, gate_up = [], []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        qkv.append(_fuse([a.q_proj, a.k_proj, a.v_proj]))
        gate_up.append(_fuse([m.gate_proj, m.up_proj]))
    # RoPE tables computed here (HF's formula) rather than through the model's rotary module, so the
    # engine depends only on the inv_freq buffer, not on how the model lays out its tables.
    inv_freq = model.model.rotary_emb.inv_freq.float()
    freqs = torch.arange(max_len, device=inv_freq.device).float()[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return DecodeWeights(qkv, gate_up, emb.cos(), emb.sin())


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2  # HF's rotate_half convention: the first half pairs with the second
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, rows - x.shape[0])) if rows > x.shape[0] else x


def step_logits(model, cache, w: DecodeWeights, tokens, positions, slots, prompts: list[tuple[list[int], int]],
                pad: bool = True) -> torch.Tensor:
    """One engine step: next-token logits for B decoding sequences (rows 0..B-1: one token each at its
    own (slot, position)) and for P new prompts (rows B..B+P-1: each prefilled into its slot).

    Batch-invariant by construction: every linear layer sees all tokens of the step stacked, padded
    to a multiple of 16 rows (MKL then sums each row the same way whatever the row count); decoding
    rows attend over a key length rounded up to a multiple of 64; each prompt attends on its own.
    So no token's numbers depend on what else shares the step. `pad=False` (batch size 1) skips the
    padding, as nothing can share the step.
    """
    m, B = model.model, tokens.shape[0]
    dev = tokens.device
    lens = [len(p) for p, _ in prompts]
    ids = torch.cat([tokens] + [torch.tensor(p, dtype=torch.long, device=dev) for p, _ in prompts])
    pos = torch.cat([positions] + [torch.arange(n, device=dev) for n in lens])
    N = ids.shape[0]
    rows = -(-N // ROW_PAD) * ROW_PAD if pad else N
    if B:
        L = min(-(-(int(positions.max()) + 1) // KEY_PAD) * KEY_PAD, cache.max_len)
        mask = (torch.arange(L, device=dev)[None, :] <= positions[:, None])[:, None, None, :]
    cos, sin = w.cos[pos][:, None], w.sin[pos][:, None]  # (N, 1, hd)
    x = _pad_rows(m.embed_tokens(ids), rows)  # (rows, hidden)
    eps = model.config.rms_norm_eps
    for i, layer in enumerate(m.layers):
        a = layer.self_attn
        nh, nkv, hd = a.n_heads, a.n_kv, a.head_dim
        h = F.rms_norm(x, (x.shape[-1],), layer.input_layernorm.weight, eps)
        qkv = F.linear(h, *w.qkv[i])[:N].view(N, nh + 2 * nkv, hd)
        qk = _rope(qkv[:, : nh + nkv], cos, sin)  # q and k heads rotated together
        kc, vc = cache.k[a.layer_idx], cache.v[a.layer_idx]
        ys = []
        if B:
            q, k, v = qk[:B, :nh, None], qk[:B, nh:], qkv[:B, nh + nkv :]  # q (B, nh, 1, hd)
            kc[slots, :, positions] = k.to(kc.dtype)
            vc[slots, :, positions] = v.to(vc.dtype)
            keys, values = kc[:, :, :L].index_select(0, slots), vc[:, :, :L].index_select(0, slots)
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask,
                                               enable_gqa=nkv != nh)  # fmt: skip
            ys.append(y.reshape(B, nh * hd))
        start = B
        for (_, slot), n in zip(prompts, lens, strict=True):
            q = qk[start : start + n, :nh].transpose(0, 1)[None]  # (1, nh, n, hd)
            k = qk[start : start + n, nh:].transpose(0, 1)[None]
            v = qkv[start : start + n, nh + nkv :].transpose(0, 1)[None]
            kc[slot, :, :n] = k[0].to(kc.dtype)
            vc[slot, :, :n] = v[0].to(vc.dtype)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, enable_gqa=nkv != nh)
            ys.append(y[0].transpose(0, 1).reshape(n, nh * hd))
            start += n
        x = x + a.o_proj(_pad_rows(torch.cat(ys) if len(ys) > 1 else ys[0], rows))
        h = F.rms_norm(x, (x.shape[-1],), layer.post_attention_layernorm.weight, eps)
        gate, up = F.linear(h, *w.gate_up[i]).chunk(2, dim=-1)
        x = x + layer.mlp.down_proj(F.silu(gate) * up)
    # logits only where a next token is needed: every decoding row, and each prompt's last token
    last = torch.tensor(list(range(B)) + [B + sum(lens[: j + 1]) - 1 for j in range(len(lens))], device=dev)
    out_rows = -(-last.shape[0] // ROW_PAD) * ROW_PAD if pad else last.shape[0]
    x = _pad_rows(x.index_select(0, last), out_rows)
    x = F.rms_norm(x, (x.shape[-1],), m.norm.weight, eps)
    return model.lm_head(x)[: last.shape[0]].float()
