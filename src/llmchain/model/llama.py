"""The decoder-only transformer (Llama family), in one file, top to bottom in the order data flows.

RMSNorm → rotary position embedding (RoPE) → grouped-query attention through PyTorch's
`scaled_dot_product_attention` → SwiGLU MLP → decoder layer → model. Config fields and parameter
names are exactly those of Hugging Face `LlamaConfig` / `LlamaForCausalLM` (and Qwen2's, whose only
difference here is a bias on q/k/v), so a state dict moves between us and `transformers` unchanged.

The model knows nothing of parallelism, mixed precision or serving: DDP/FSDP wrapping and autocast
live in `train/`. It offers only `forward`: generation (KV cache, batching, sampling) is the inference
engine's, `llmchain.infer`, which reads these weights — one way to generate, for the CLI, eval and serve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmchain.model.autograd import CausalMatmulAttention, CrossEntropySum, Rotary, use_matmul_attention


@dataclass
class LlamaConfig:
    """HF `LlamaConfig` fields (the subset this architecture uses), with their HF names."""

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Llama: bias on q, k, v and o
    mlp_bias: bool = False
    model_type: str = "llama"  # "qwen2": bias on q, k, v only (Qwen2's layout)
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    # Training-only dropout on the embeddings and on each residual branch (attention and MLP outputs);
    # a no-op in eval mode and at 0. Not an HF Llama field: HF ignores the extra config.json key.
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of config.json, kept as they were

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """From an HF `config.json` dict (Llama or Qwen2). Raises ValueError for what we cannot run."""
        model_type = d.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"model_type {model_type!r} is not a Llama-family model (llama, qwen2, mistral)")
        d = dict(d)
        # transformers ≥ 5 writes `rope_parameters` and `dtype`; 4.x wrote `rope_theta`/`rope_scaling`/`torch_dtype`.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise ValueError(f"RoPE scaling {rope!r} is not supported (only the default RoPE)")
        if "rope_theta" in rope and "rope_theta" not in d:
            d["rope_theta"] = rope["rope_theta"]
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d["dtype"]
        if model_type == "mistral" and d.get("sliding_window"):
            # A window at least as long as the context is no window at all.
            if d["sliding_window"] < d.get("max_position_embeddings", 0):
                raise ValueError("sliding-window attention is not supported")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if isinstance(kwargs.get("torch_dtype"), str) is False:
            kwargs.pop("torch_dtype", None)
        kwargs["model_type"] = "qwen2" if model_type == "qwen2" else "llama"
        kwargs.setdefault("num_key_value_heads", d.get("num_attention_heads", cls.num_attention_heads))
        extra = {k: v for k, v in d.items() if k not in names and k not in ("rope_parameters", "dtype", "rope_scaling")}
        return cls(**kwargs, extra=extra)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content that `transformers.AutoConfig` reads."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update({k: v for k, v in self.extra.items() if k not in ("architectures", "model_type")})
        arch = "Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"
        d.update(architectures=[arch], model_type=self.model_type, hidden_act="silu", rope_scaling=None)
        d["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        d["dtype"] = self.torch_dtype
        if self.model_type == "qwen2":
            d.pop("attention_bias")
            d.pop("mlp_bias")
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
        return d

    def num_params(self) -> int:
        """Parameter count (embeddings included; the LM head counted once when tied)."""
        h, i, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0) + (h if self.o_bias else 0)
        mlp = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * per_layer + h


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 autocast: the mean of squares overflows/underflows otherwise.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions (HF's "rotate_half" layout: first half pairs with second)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # not a weight: HF doesn't save it

    @torch.no_grad()
    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions (B, T) → cos, sin (B, 1, T, head_dim), always fp32 (precision of large positions)
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as HF writes it, on x (..., head_dim) with cos/sin from RotaryEmbedding."""
    if x.requires_grad and not _compiling():
        return Rotary.apply(x, cos, sin)
    return (x * cos.to(x.dtype)) + (rotate_half(x) * sin.to(x.dtype))


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        h, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, self.n_kv * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, self.n_kv * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, h, bias=config.o_bias)

    def forward(self, x, cos, sin, mask=None):
        """`mask` (B, 1, T, T), True where a query may attend: packed SFT rows (train/sft.py) pass a
        block-diagonal one; None is plain causal attention."""
        B, T, _ = x.shape
        # Three matmuls, not one over concatenated weights: fusing measured no faster here (fp32 and
        # bf16, eager and compiled: the per-step concatenation and the split of its gradient eat the gain).
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        low = v.dtype  # bf16 under autocast
        if x.device.type == "cpu" and not _compiling():
            # PyTorch's CPU attention kernels are faster in fp32 than in bf16 (fwd+bwd at T=256: 23 vs
            # 35 ms), so under autocast attend — and rotate — in fp32 on CPU; on GPU stay in bf16.
            q, k, v = q.float(), k.float(), v.float()
        q = apply_rotary(q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rotary(k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if mask is None and use_matmul_attention(q, k, low):
            y = CausalMatmulAttention.apply((q * self.head_dim**-0.5).to(low), k.to(low), v.to(low))
            y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
            return self.o_proj(y)
        y = _attention(q, k, v, is_causal=T > 1) if mask is None else _attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(y if torch.is_autocast_enabled(x.device.type) else y.to(x.dtype))


def _attention(q, k, v, **kw) -> torch.Tensor:
    """SDPA with grouped-query attention: each kv head serves n_heads / n_kv query heads."""
    if k.shape[1] != q.shape[1]:
        # The kernel indexes the shared kv heads itself: no copies (compiled too, as HF does, when unmasked).
        if _SDPA_GQA and not (_compiling() and "attn_mask" in kw):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _compiling() -> bool:
    # The speed tricks in this file (fp32 CPU attention, CrossEntropySum, Rotary) are for eager
    # kernels; compiled, the plain HF-shaped graph measured faster, so take that — except bf16 CPU
    # training attention, where CausalMatmulAttention is faster compiled too, and unmasked GQA.
    return torch.compiler.is_compiling()


_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa is new in 2.5


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        h, i, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        self.config = config  # read at run time: changing config.dropout takes effect without a rebuild

    def forward(self, x, cos, sin):
        p = self.config.dropout if self.training else 0.0
        x = x + _dropout(self.self_attn(self.input_layernorm(x), cos, sin), p)
        return x + _dropout(self.mlp(self.post_attention_layernorm(x)), p)


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    # Skipped entirely at p = 0 so that the RNG stream (and so seeded runs) stay as without dropout.
    return F.dropout(x, p, training=True) if p > 0 else x


class LlamaModel(nn.Module):
    """The trunk (HF's `model.` prefix): embeddings, decoder layers, final norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.config = config

    def forward(self, input_ids, positions=None):
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self.rotary_emb(positions)
        x = _dropout(self.embed_tokens(input_ids), self.config.dropout if self.training else 0.0)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class Llama(nn.Module):
    """Causal LM (HF `LlamaForCausalLM` / `Qwen2ForCausalLM`): trunk + LM head."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # Scaled init of the projections that write into the residual stream (GPT-2 / nanoGPT):
        # keeps the residual's variance from growing with depth.
        std = config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) — or (B, 1, vocab) with `last_only` — and the mean cross-entropy
        against `targets` (B, T) when given (-100 marks positions without loss)."""
        h = self.model(input_ids, positions)
        if last_only:
            h = h[:, -1:]  # scoring a continuation needs only the last position: skip the vocab matmul for the rest
        logits = self.lm_head(h)
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        c = self.config
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq_len


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), in fp32; -100 marks no loss.

    On CPU in eager mode through `CrossEntropySum`, which never materialises the (B·T, V) fp32
    log-probabilities (autograd.py says why and how much it saves).
    """
    flat, t = logits.flatten(0, 1), targets.flatten()
    if logits.device.type != "cpu" or _compiling():  # compiled, the log-softmax is fused anyway
        return F.cross_entropy(flat.float(), t, ignore_index=-100)
    return CrossEntropySum.apply(flat, t) / (t != -100).sum()  # like "mean": NaN when no position has a target
