"""The serving engine's C kernels (`kernels.c`): built on first use, cached, called via ctypes.

Why by hand:
  * decoding attention is memory-bound on a CPU — every step reads each running sequence's whole KV
    cache. Stored in bf16 it is half the bytes of fp32, but PyTorch's CPU bf16 batched matmul copies
    its strided inputs and runs 2x slower than fp32. The kernel reads the bf16 cache directly, sums in
    fp32 and skips masked positions;
  * in a decode step every separate small op costs ~10-40 µs (its code is evicted by the streaming
    matmuls), far more than its arithmetic: the residual add, RMSNorm and bf16 cast are one call.
Built for the model's head_dim and GQA group with `cc -O3 -march=native` (a ~0.3 s compile, cached
under ~/.cache/llmchain/kernels keyed by the source, flags and CPU). Without a C compiler — or with
LLMCHAIN_C_KERNELS=0 — `load()` returns None and the engine keeps its fp32 cache and PyTorch ops.
Loading a library runs its code, so it is loaded only from a cache dir that is ours alone (owned by us,
not a symlink, not group/world-writable) and only a regular file that is ours and not writable by
others; an unsafe dir is not used (the kernels are built in a fresh private temporary dir instead).
LLMCHAIN_KERNELS_GENERIC=1 (read at a process's first `load`) builds the portable C branches even on
an AVX-512 CPU, into a library of its own: how the tests check those branches on any machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger("llmchain.serve")
SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=gnu11"]
BLOCK = 64  # keys per block of the transposed key cache (KB in the C source)
GENERIC_ENV = "LLMCHAIN_KERNELS_GENERIC"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmchain" / "kernels"


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
        return next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _variant_flags(generic: bool | None) -> list[str]:
    """-DLLMCHAIN_GENERIC where the portable branches are asked for (`generic`, or by default the env var).
    The flags are part of the library's cache key, so each variant is a .so of its own."""
    if generic is None:
        generic = os.environ.get(GENERIC_ENV, "0") == "1"
    return ["-DLLMCHAIN_GENERIC"] if generic else []


@cache
def load(head_dim: int, group: int, generic: bool | None = None) -> CpuKernels | None:
    """The kernels for this head_dim and group (query heads per kv head), or None where they cannot be built.
    `generic`: the portable C branches instead of the AVX-512 ones (None: LLMCHAIN_KERNELS_GENERIC=1)."""
    if os.environ.get("LLMCHAIN_C_KERNELS", "1") == "0" or head_dim % 16 or platform.system() != "Linux":
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        log.warning("no C compiler (cc): the engine uses PyTorch ops and an fp32 KV cache")
        return None
    flags = [*FLAGS, f"-DHD={head_dim}", f"-DG={group}", *_variant_flags(generic)]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    try:
        lib = _load_library(cc, flags, _cache_dir(), f"serve-kernels-hd{head_dim}-g{group}-{key}.so")
        return CpuKernels(lib, head_dim, group)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("building the C kernels failed (%s): the engine uses PyTorch ops and an fp32 KV cache", detail)
        return None


class UnsafeFile(OSError):
    """A library we will not load: not ours, writable by others, or not a regular file."""


def _unsafe_dir(path: Path) -> str | None:
    """Why `path` may not hold libraries we load (None: it is ours alone)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _open_private(path: Path) -> ctypes.CDLL:
    """dlopen `path` if it is a regular file of ours that no one else can write. The checks are made on
    the opened file and the library is loaded through that same descriptor, so the file cannot be
    swapped between the check and the load."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a symlink fails here (ELOOP)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise UnsafeFile(f"{path}: not a regular file of this user's that only it can write")
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
    # The descriptor stays open (one per library, a handful per process): glibc knows a loaded library
    # by its path, so a later library opened under a reused /proc/self/fd/N would get this one back.
    return lib


def _compile(cc: str, flags: list[str], out: Path, source: Path = SOURCE) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, "-o", tmp, str(source), "-lm"], check=True, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
        os.chmod(tmp, 0o644)  # the linker's mode follows the umask, which may let the group write
        os.replace(tmp, out)  # atomic: a half-written library never has the final name
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load_library(cc: str, flags: list[str], cache_dir: Path, name: str, source: Path = SOURCE) -> ctypes.CDLL:
    """The kernels library `name`: from `cache_dir` (built there first if missing or unsafe) when that
    dir is private, else built in a fresh private temporary dir that is deleted once it is loaded."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        problem = _unsafe_dir(cache_dir)
    except OSError as e:
        problem = f"it cannot be created ({e.strerror})"
    if problem is not None:
        log.warning("not loading the C kernels from %s: %s; building them in a private temporary dir",
                    cache_dir, problem)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="llmchain-kernels-") as tmp:  # mode 0700, ours
            _compile(cc, flags, Path(tmp) / name, source)
            return _open_private(Path(tmp) / name)  # loaded (mapped): the file may go
    out = cache_dir / name
    try:
        return _open_private(out)
    except FileNotFoundError:
        pass
    except OSError as e:  # a symlink, someone else's file, a writable one: replace it with our own build
        log.warning("rebuilding the C kernels at %s: %s", out, e)
    _compile(cc, flags, out, source)
    return _open_private(out)


class CpuKernels:
    """The C kernels, bound for one head_dim and GQA group (see kernels.c)."""

    def __init__(self, lib: ctypes.CDLL, head_dim: int, group: int):
        self.head_dim, self.group = head_dim, group
        self._attn, self._norm, self._rope = lib.decode_attention, lib.add_rms_norm, lib.rope_write
        self._argmax = lib.argmax_rows
        lib.kernels_isa.restype = ctypes.c_char_p
        self.isa = lib.kernels_isa().decode()  # "avx512" or "generic": which branches the build took
        for f in (self._attn, self._norm, self._rope, self._argmax):
            f.restype = None
        ptr = ctypes.c_void_p
        self._attn.argtypes = [ptr] * 7 + [ctypes.c_int] * 3
        self._norm.argtypes = [ptr] * 3 + [ctypes.c_float, ptr] + [ctypes.c_int] * 2
        self._rope.argtypes = [ptr] * 5 + [ctypes.c_float, ctypes.c_int] + [ptr] * 5 + [ctypes.c_int] * 4
        self._argmax.argtypes = [ptr, ctypes.c_int, ctypes.c_int, ptr]

    def attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                  lens: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """softmax(q·Kᵀ)·V for one query per sequence over its slot of a `BlockedKV` layer: q (B, nh, hd)
        fp32 (scaled by 1/√hd), slots/lens (B,) int64 → (B, nh·hd) fp32. Sequence b attends to positions
        0..lens[b]-1 of its slot, and reads nothing else."""
        B, nh, hd = q.shape
        nkv, T = values.shape[1], values.shape[2]
        q = q.contiguous()
        out, scratch = torch.empty(B, nh * hd), torch.empty(self.group * T)
        self._attn(q.data_ptr(), keys.data_ptr(), values.data_ptr(), slots.data_ptr(), lens.data_ptr(),
                   scratch.data_ptr(), out.data_ptr(), B, nkv, T)  # fmt: skip
        return out

    def rope_write(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, qscale: float, nscaled: int,
                   kv_out: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
        """qkv (N, (nh + 2·nkv)·hd) bf16, row r at (slots[r], positions[r]): RoPE on its q and k heads,
        k and v written into a `BlockedKV` layer (keys, values). Returns q (N, nh, hd) fp32 — rows below
        `nscaled` times `qscale` — and, if `kv_out`, the rotated k and the v as (N, nkv, hd) fp32."""
        N, hd = qkv.shape[0], self.head_dim
        nkv, T = values.shape[1], values.shape[2]
        nh = qkv.shape[1] // hd - 2 * nkv
        assert qkv.dtype == torch.bfloat16 and qkv.is_contiguous() and cos.dtype == sin.dtype == torch.float32
        assert positions.dtype == slots.dtype == torch.int64 and positions.shape == slots.shape == (N,)
        q = torch.empty(N, nh, hd)
        k, v = (torch.empty(N, nkv, hd), torch.empty(N, nkv, hd)) if kv_out else (None, None)
        self._rope(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), positions.data_ptr(), slots.data_ptr(), qscale,
                   nscaled, q.data_ptr(), None if k is None else k.data_ptr(), None if v is None else v.data_ptr(),
                   keys.data_ptr(), values.data_ptr(), N, nh, nkv, T)  # fmt: skip
        return q, k, v

    def argmax(self, x: torch.Tensor) -> list[int]:
        """Each row's argmax (first index on ties, NaN first), as `x.argmax(-1).tolist()`: x (rows, cols) fp32."""
        x = x.contiguous()
        assert x.dtype == torch.float32 and x.dim() == 2
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self._argmax(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
        return out.tolist()

    def add_rms_norm(self, x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x += y (in place; y bf16, or None), then RMSNorm(x)·weight as bf16. x (rows, D) fp32 contiguous."""
        rows, D = x.shape
        assert x.is_contiguous() and x.dtype == torch.float32 and D % 16 == 0
        if y is not None:
            y = y.contiguous()
            assert y.dtype == torch.bfloat16 and y.shape == x.shape
        w = weight.detach().float().contiguous()
        out = torch.empty(rows, D, dtype=torch.bfloat16)
        self._norm(x.data_ptr(), None if y is None else y.data_ptr(), w.data_ptr(), eps, out.data_ptr(), rows, D)
        return out


class BlockedKV:
    """The kernel's KV cache, bf16: keys (slots, nkv, T/64, hd, 64) — blocks of 64 positions, transposed —
    and values (slots, nkv, T, hd), per layer. T is max_len rounded up to 64."""

    def __init__(self, config, slots: int, max_len: int, device=None):
        T = -(-max_len // BLOCK) * BLOCK
        nkv, hd = config.num_key_value_heads, config.head_dim
        # empty, not zeros: nothing reads a position before it is written (the kernel reads positions
        # < len; a key block's unwritten lanes are scored and dropped), and untouched pages cost no
        # memory — a 64-slot server holds only what its requests use (`small`: engine RSS 1,176 -> 653 MB).
        self.k = [torch.empty(slots, nkv, T // BLOCK, hd, BLOCK, dtype=torch.bfloat16, device=device)
                  for _ in range(config.num_hidden_layers)]  # fmt: skip
        self.v = [torch.empty(slots, nkv, T, hd, dtype=torch.bfloat16, device=device)
                  for _ in range(config.num_hidden_layers)]  # fmt: skip
        self.slots, self.max_len = slots, T

    def write_prompt(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (nkv, n, hd): positions 0..n-1 of `slot` (the last block's tail is zero-filled)."""
        nkv, n, hd = k.shape
        nb = -(-n // BLOCK)
        kp = torch.nn.functional.pad(k, (0, 0, 0, nb * BLOCK - n)).view(nkv, nb, BLOCK, hd)
        self.k[layer][slot, :, :nb] = kp.transpose(-1, -2).to(torch.bfloat16)
        self.v[layer][slot, :, :n] = v.to(torch.bfloat16)

    def copy_prefix(self, dst: int, src: int, n: int) -> None:
        """Positions 0..n-1 of slot `src` into slot `dst` (whole key blocks: past n is never read)."""
        nb = -(-n // BLOCK)
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :nb] = k[src, :, :nb]
            v[dst, :, :n] = v[src, :, :n]
