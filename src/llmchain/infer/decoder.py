"""The engine's fused decode step (`decode.c`): every decoding row of a step through all layers in one C call.

Why: on a CPU without AMX the engine's linears are fp32 PyTorch matmuls, and a small model's decode step
is ~15 small ops per layer. Profiled on this project's 2-core AMD EPYC (docs/decode.md), `small` at
batch 1 spent ~74 % of a step in `aten::mm` (MKL's GEMV at M = 1, ~290 µs per call on this CPU) and
most of the rest in per-op overhead. The C step reads each weight once per step for all rows (fp32,
bf16 or int8 weights, converted here once) and runs the layer loop without returning to Python.

It takes only the decoding rows: prompts are still prefilled by `forward.step_logits` (fp32 GEMMs,
which are efficient at many rows) into the same fp32 `KVCache`, which the C step then reads and
extends. A row's logits do not depend on the other rows of the step, nor on the thread count (see
decode.c), so the step may use more threads than the engine gives PyTorch without breaking that.

`load_decoder` returns None where it cannot run (no C compiler, LLMCHAIN_C_KERNELS=0, shapes it does
not handle, biases, a non-fp32 cache): the engine then decodes with `step_logits` as before.
LLMCHAIN_KERNELS_GENERIC=1 builds the portable branches (no VNNI intrinsics), as for infer/kernels.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path

import torch

from llmchain.infer import kernels

log = logging.getLogger("llmchain.infer")
SOURCE = Path(__file__).with_name("decode.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
WEIGHTS = ("auto", "float32", "bfloat16", "int8")
_TYPE = {"float32": 0, "bfloat16": 1, "int8": 2}


class _Mat(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("n", ctypes.c_int), ("k", ctypes.c_int)]


class _Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("layers", "dim", "ffn", "vocab", "nh", "nkv", "hd", "T", "type")]
    _fields_ += [("eps", ctypes.c_float)]
    _fields_ += [(name, ctypes.c_void_p) for name in ("embed", "cos", "sin", "norm_attn", "norm_mlp", "norm_final",
                                                       "qkv", "o", "gate_up", "down", "head", "kc", "vc")]  # fmt: skip


@cache
def _library(generic: bool | None) -> ctypes.CDLL | None:
    """The built library (once per process and variant), or None where it cannot be built."""
    if os.environ.get("LLMCHAIN_C_KERNELS", "1") == "0" or platform.system() != "Linux":
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    flags = [*FLAGS, *kernels._variant_flags(generic)]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *flags, kernels._cpu_flags()]).encode()).hexdigest()[:16]
    try:
        lib = kernels._load_library(cc, flags, kernels._cache_dir(), f"decode-{key}.so", SOURCE)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("building the fused decode step failed (%s): decoding runs on PyTorch ops",
                    getattr(e, "stderr", "") or e)  # fmt: skip
        return None
    lib.decode_isa.restype = ctypes.c_char_p
    lib.decode_packed.restype = ctypes.c_int
    lib.decode_packed.argtypes = [ctypes.c_int]
    lib.decode_step.restype = ctypes.c_int
    lib.decode_step.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    return lib


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: (q (n, k) int8, scale (n,) fp32) with w ≈ q · scale[:, None]."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous(), scale.float().contiguous()


def pack(w: torch.Tensor) -> torch.Tensor:
    """`w` (n, k), bf16 or int8, in decode.c's packed layout (see `packed_cols` there): the first n // 8 * 8
    rows by tiles of 8, per 64-byte block of k (k zero-padded to whole blocks) the tile's 8 blocks in turn;
    then the last n % 8 rows as they are. Flat."""
    n, k = w.shape
    e = 64 // w.element_size()
    full, kp = n // 8 * 8, -(-k // e) * e
    tiles = w.new_zeros(full, kp)
    tiles[:, :k] = w[:full]
    tiles = tiles.view(full // 8, 8, kp // e, e).permute(0, 2, 1, 3).reshape(-1)
    return torch.cat([tiles, w[full:].reshape(-1)])


class FusedDecoder:
    """Next-token logits of a step's decoding rows, over `DecodeWeights` and the engine's fp32 `KVCache`."""

    def __init__(self, lib: ctypes.CDLL, w, cache, weights: str, threads: int):
        self.lib, self.weights, self.threads = lib, weights, threads
        self.isa = lib.decode_isa().decode()
        self._keep: list = []  # every tensor the C struct points into stays alive with the decoder
        kind = _TYPE[weights]

        def ptr(t: torch.Tensor) -> int:
            self._keep.append(t)
            return t.data_ptr()

        packed = bool(lib.decode_packed(kind))

        def mat(lin) -> _Mat:
            wt = lin.w.detach().float().contiguous()
            if kind == 2:
                q, s = quantize_int8(wt)
                return _Mat(ptr(pack(q) if packed else q), ptr(s), wt.shape[0], wt.shape[1])
            data = wt.to(torch.bfloat16) if kind == 1 else wt
            return _Mat(ptr(pack(data) if packed else data), None, wt.shape[0], wt.shape[1])

        def mats(lins) -> ctypes.Array:
            arr = (_Mat * len(lins))(*[mat(x) for x in lins])
            self._keep.append(arr)
            return arr

        def ptrs(ts) -> ctypes.Array:
            arr = (ctypes.c_void_p * len(ts))(*[ptr(t.detach().float().contiguous()) for t in ts])
            self._keep.append(arr)
            return arr

        nh, nkv, hd = w.heads
        D, n_layers = w.embed.shape[1], len(w.qkv)
        F = w.gate_up[0].w.shape[0] // 2
        self.vocab = w.head.w.shape[0]
        self._head = mat(w.head)
        self._keep.append(self._head)
        kc = (ctypes.c_void_p * n_layers)(*[t.data_ptr() for t in cache.k])
        vc = (ctypes.c_void_p * n_layers)(*[t.data_ptr() for t in cache.v])
        self._keep += [kc, vc, cache]
        self.model = _Model(
            n_layers, D, F, self.vocab, nh, nkv, hd, cache.max_len, kind, w.eps,
            ptr(w.embed.float().contiguous()), ptr(w.cos.contiguous()), ptr(w.sin.contiguous()),
            ctypes.addressof(ptrs([a for a, _ in w.norms])), ctypes.addressof(ptrs([b for _, b in w.norms])),
            ptr(w.final_norm.float().contiguous()), ctypes.addressof(mats(w.qkv)), ctypes.addressof(mats(w.o)),
            ctypes.addressof(mats(w.gate_up)), ctypes.addressof(mats(w.down)), ctypes.addressof(self._head),
            ctypes.addressof(kc), ctypes.addressof(vc))  # fmt: skip

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) fp32 of B decoding rows: token b at position positions[b] of cache slot slots[b]
        (its key and value are written there; it attends to positions 0..positions[b] of its slot)."""
        B = tokens.shape[0]
        tokens, positions, slots = (t.to(torch.int64).contiguous() for t in (tokens, positions, slots))
        out = torch.empty(B, self.vocab)
        rc = self.lib.decode_step(ctypes.addressof(self.model), B, tokens.data_ptr(), positions.data_ptr(),
                                  slots.data_ptr(), out.data_ptr(), self.threads)  # fmt: skip
        if rc:
            raise MemoryError("the fused decode step could not allocate its buffers")
        return out


def load_decoder(w, cache, weights: str = "float32", threads: int = 1,
                 generic: bool | None = None) -> FusedDecoder | None:  # fmt: skip
    """The fused decode step over `w` (fp32 `DecodeWeights`) and `cache` (an fp32 `KVCache`) with weights in
    `weights` (float32 | bfloat16 | int8), or None where it cannot run (then the caller keeps PyTorch)."""
    if weights not in _TYPE:
        raise ValueError(f"weights must be one of {', '.join(_TYPE)}, not {weights!r}")
    nh, nkv, hd = w.heads
    shapes = [lin.w.shape for lin in (*w.qkv, *w.o, *w.gate_up, *w.down, w.head)]
    if (w.bf16 or not isinstance(w.gate_up[0], type(w.head)) or w.embed.device.type != "cpu"
            or any(lin.b is not None for lin in (*w.qkv, *w.o, *w.gate_up, *w.down, w.head))
            or any(n % 2 or k % 16 for n, k in shapes) or hd % 16 or nh % nkv
            or any(t.dtype != torch.float32 or not t.is_contiguous() for t in (*cache.k, *cache.v))):  # fmt: skip
        return None
    lib = _library(generic)
    if lib is None:
        return None
    return FusedDecoder(lib, w, cache, weights, threads)
