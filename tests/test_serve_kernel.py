"""The serving engine's C kernels (infer/kernels.py) and their blocked bf16 KV cache, against plain PyTorch
and float64 references — each kernel in both builds: the native one (AVX-512 branches where the CPU has
them) and the generic one (LLMCHAIN_KERNELS_GENERIC: the portable branches, forced on any CPU)."""

from __future__ import annotations

import logging
import math
import os
import platform
import stat

import pytest
import torch

from conftest import skip_or_fail
from llmchain.infer import kernels as K
from llmchain.model.llama import LlamaConfig

BUILDS = pytest.mark.parametrize("generic", [False, True], ids=["native", "generic"])


def _config(hd: int, nh: int, nkv: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=100, hidden_size=hd * nh, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=nh, num_key_value_heads=nkv, max_position_embeddings=300)  # fmt: skip


def _need(hd: int, group: int, generic: bool) -> K.CpuKernels:
    kernels = K.load(hd, group, generic)
    if kernels is None:
        skip_or_fail("the C kernels cannot be built here (no cc, or not Linux)")
    assert kernels.isa == ("generic" if generic else _native_isa())
    return kernels


def _native_isa() -> str:
    """What `-march=native` gives on this machine: the AVX-512 branches where the CPU has AVX-512F."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    return "avx512" if x86 and "avx512f" in K._cpu_flags().split() else "generic"


@BUILDS
@pytest.mark.parametrize(("hd", "nh", "nkv"), [(64, 8, 4), (32, 4, 4), (16, 6, 2)])
def test_kernel_matches_softmax_attention_over_what_the_cache_holds(hd, nh, nkv, generic):
    attn = _need(hd, nh // nkv, generic).attention
    cfg, g = _config(hd, nh, nkv), torch.Generator().manual_seed(0)
    cache = K.BlockedKV(cfg, slots=5, max_len=200)
    assert cache.max_len == 256  # rounded up to whole 64-key blocks
    lens = [1, 63, 64, 65, 200]  # within, at and across block edges
    keys = [torch.randn(nkv, n, hd, generator=g) for n in lens]
    values = [torch.randn(nkv, n, hd, generator=g) for n in lens]
    for slot, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.write_prompt(1, slot, k, v)
    q = torch.randn(5, nh, hd, generator=g) / math.sqrt(hd)
    slots = torch.tensor([3, 0, 4, 1, 2])  # rows in any slot order
    n = torch.tensor([lens[s] for s in slots])
    out = attn(q, cache.k[1], cache.v[1], slots, n)
    for b, s in enumerate(slots.tolist()):  # float64 reference over the bf16-rounded keys/values
        kk, vv = keys[s].bfloat16().double(), values[s].bfloat16().double()
        qq = q[b].double().view(nkv, nh // nkv, hd)
        p = torch.softmax(qq @ kk.transpose(-1, -2), dim=-1)
        torch.testing.assert_close(out[b].double(), (p @ vv).reshape(-1), rtol=1e-5, atol=1e-5)
    for b in range(5):  # a row alone gives its batched result bit for bit
        alone = attn(q[b : b + 1], cache.k[1], cache.v[1], slots[b : b + 1], n[b : b + 1])
        assert torch.equal(alone[0], out[b])


@BUILDS
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm_is_the_residual_add_then_torch_rms_norm(with_residual, generic):
    kernels = _need(64, 2, generic)
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(37, 512, generator=g) * 3, torch.randn(512, generator=g)
    y = torch.randn(37, 512, generator=g).bfloat16() if with_residual else None
    x0 = x.clone()
    h = kernels.add_rms_norm(x, y, w, 1e-5)
    want_x = x0 + y.float() if with_residual else x0
    assert torch.equal(x, want_x)  # the residual stream, updated in place, exactly
    want = torch.nn.functional.rms_norm(want_x, (512,), w, 1e-5)
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), want, rtol=2**-8, atol=1e-6)  # within bf16 rounding
    alone = kernels.add_rms_norm(x0[5:6].clone(), y[5:6] if with_residual else None, w, 1e-5)
    assert torch.equal(alone, h[5:6])  # a row alone: the same bits


@BUILDS
def test_rope_write_rotates_like_the_engine_and_writes_the_cache_row_by_row(generic):
    from llmchain.infer.forward import _rope

    kernels = _need(32, 2, generic)
    cfg, g = _config(32, 4, 2), torch.Generator().manual_seed(1)
    nh, nkv, hd, n = 4, 2, 32, 70
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    emb = torch.cat([torch.arange(150).float()[:, None] * inv] * 2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    qkv = torch.randn(n, (nh + 2 * nkv) * hd, generator=g).bfloat16()  # a prompt's rows, as the matmul gives them
    pos, slot2 = torch.arange(n), torch.full((n,), 2)
    a, b = K.BlockedKV(cfg, 3, 150), K.BlockedKV(cfg, 3, 150)
    q, k, v = kernels.rope_write(qkv, cos, sin, pos, slot2, a.k[0], a.v[0], 0.5, 3, kv_out=True)
    heads = qkv.float().view(n, nh + 2 * nkv, hd)
    want = _rope(heads[:, : nh + nkv], cos[:n, None], sin[:n, None])
    torch.testing.assert_close(q[3:], want[3:, :nh], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q[:3], want[:3, :nh] * 0.5, rtol=1e-6, atol=1e-6)  # rows < nscaled: scaled
    torch.testing.assert_close(k, want[:, nh:], rtol=1e-6, atol=1e-6)
    assert torch.equal(v, heads[:, nh + nkv :])
    keys = lambda c, s: c.k[0][s].transpose(-1, -2).reshape(nkv, -1, hd)  # noqa: E731 — (nkv, T, hd) again
    assert torch.equal(keys(a, 2)[:, :n], k.transpose(0, 1).bfloat16())
    assert torch.equal(a.v[0][2, :, :n], qkv.view(n, -1, hd)[:, nh + nkv :].transpose(0, 1))  # v's bits unchanged
    for t in range(n):  # one position per step (decoding), beside another sequence in slot 0 at position 5
        rows = torch.stack([qkv[t], qkv[0]])
        qt, kt, vt = kernels.rope_write(rows, cos, sin, torch.tensor([t, 5]), torch.tensor([2, 0]), b.k[0], b.v[0],
                                        0.5, int(t < 3), kv_out=False)  # fmt: skip
        assert kt is None and vt is None and torch.equal(qt[0], q[t])  # a row's numbers do not depend on its call
    assert torch.equal(keys(b, 2)[:, :n], keys(a, 2)[:, :n]) and torch.equal(b.v[0][2, :, :n], a.v[0][2, :, :n])
    b.copy_prefix(1, 2, n)  # another slot starts from the same prefix (n > 1, compaction)
    assert torch.equal(b.v[0][1, :, :n], b.v[0][2, :, :n]) and torch.equal(keys(b, 1)[:, :n], keys(a, 2)[:, :n])


@BUILDS
@pytest.mark.parametrize("cols", [4096, 1000, 17, 5])
def test_argmax_is_torch_argmax_with_ties_nan_and_inf(cols, generic):
    kernels = _need(32, 2, generic)
    x = torch.randn(9, cols, generator=torch.Generator().manual_seed(cols))
    x[1, 2], x[1, cols - 1] = 99.0, 99.0  # a tie: the first wins
    x[2] = 0.0  # all equal
    x[3, cols // 2], x[3, cols - 1] = float("nan"), float("nan")  # NaN counts as largest, as in torch
    x[4] = float("-inf")
    x[5, cols - 1] = float("inf")
    assert kernels.argmax(x) == x.argmax(-1).tolist() == x.max(-1).indices.tolist()


def test_without_a_compiler_or_when_disabled_there_is_no_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    K.load.cache_clear()
    try:
        monkeypatch.setenv("LLMCHAIN_C_KERNELS", "0")
        assert K.load(64, 2) is None
        monkeypatch.delenv("LLMCHAIN_C_KERNELS")
        monkeypatch.setenv("CC", "no-such-compiler-xyz")
        assert K.load(64, 2) is None
        assert K.load(48 + 1, 1) is None  # a head_dim the kernel's vectors do not divide
        assert not list(tmp_path.rglob("*.so"))
    finally:
        K.load.cache_clear()


def _fresh_load(hd: int = 16, group: int = 1) -> K.CpuKernels | None:
    K.load.cache_clear()  # load() is cached per process: these tests each want a real look at the dir
    try:
        return K.load(hd, group)
    finally:
        K.load.cache_clear()


@pytest.fixture
def cc():
    import shutil

    if shutil.which("cc") is None or os.environ.get("LLMCHAIN_C_KERNELS") == "0":
        skip_or_fail("no C compiler (cc)")


def test_kernels_are_never_loaded_from_a_cache_dir_others_can_write(cc, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shared = tmp_path / "llmchain" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # as in a /tmp-like place: anyone could plant a library here
    with caplog.at_level(logging.WARNING, logger="llmchain.serve"):
        kernels = _fresh_load()
    assert kernels is not None and kernels.argmax(torch.tensor([[1.0, 3.0, 2.0]])) == [1]  # built privately
    assert "others can write to it (mode 777)" in caplog.text
    assert not list(shared.iterdir())  # nothing built into, or loaded from, the unsafe dir
    shared.chmod(0o700)
    link = tmp_path / "elsewhere"
    shared.rename(link)
    shared.symlink_to(link)  # a symlinked cache dir is refused too, even one that points to a private dir
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmchain.serve"):
        assert _fresh_load() is not None
    assert "symbolic link" in caplog.text and not list(link.iterdir())


def test_a_cached_library_that_is_not_ours_alone_is_rebuilt_not_loaded(cc, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _fresh_load() is not None
    (lib,) = (tmp_path / "llmchain" / "kernels").iterdir()
    assert stat.S_IMODE(lib.parent.stat().st_mode) & 0o077 == 0  # the dir we create is private
    assert stat.S_IMODE(lib.stat().st_mode) & 0o022 == 0
    built = lib.stat().st_ino
    lib.chmod(0o666)  # someone else could have rewritten it
    with caplog.at_level(logging.WARNING, logger="llmchain.serve"):
        assert _fresh_load() is not None
    assert "rebuilding" in caplog.text and lib.stat().st_ino != built
    assert stat.S_IMODE(lib.stat().st_mode) & 0o022 == 0
    planted = tmp_path / "planted.so"
    lib.rename(planted)
    lib.symlink_to(planted)  # a symlink in place of the library is replaced by a build of our own
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmchain.serve"):
        assert _fresh_load() is not None
    assert "rebuilding" in caplog.text and not lib.is_symlink() and lib.is_file()


def test_the_env_var_forces_the_generic_build_at_load(monkeypatch):
    native = _need(64, 2, False)
    K.load.cache_clear()
    try:
        monkeypatch.setenv(K.GENERIC_ENV, "1")
        assert K.load(64, 2).isa == "generic"
        monkeypatch.setenv(K.GENERIC_ENV, "0")
        K.load.cache_clear()
        assert K.load(64, 2).isa == native.isa == _native_isa()
    finally:
        K.load.cache_clear()
