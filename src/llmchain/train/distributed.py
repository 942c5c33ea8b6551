"""Where training runs: device, process group, precision — and the DDP/FSDP2 wrapping of a model.

`setup_runtime()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): without it the run is a
single process; with it we join the process group (NCCL on CUDA, gloo on CPU). Nothing here assumes
CUDA exists. The model itself knows nothing of this module (DESIGN.md: wrapping lives in train/).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from llmchain.errors import ConfigError

# Dense bf16/fp16 peak FLOP/s of common accelerators (for MFU); matched by substring of the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}  # fmt: skip


@dataclass
class Runtime:
    """One process's view of the run: its rank, its device, the autocast dtype."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dtype: torch.dtype = torch.float32  # autocast dtype; float32 means autocast off
    peaks: dict[torch.dtype, float] = field(default_factory=dict)  # peak FLOP/s per process by dtype (MFU)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_flops(self) -> float | None:
        return self.peaks.get(self.dtype)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over processes (in place; identity for one process)."""
        if self.distributed:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


_RUNTIME: Runtime | None = None


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def _matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 6) -> float:
    """Measured FLOP/s of an n×n matmul, best of `reps` (a stand-in for a CPU's peak, which no API reports).

    Each product is timed on its own and the fastest kept: a busy machine or a first-call kernel
    set-up (oneDNN/AMX) must not make the peak look small, which would inflate MFU.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / max(best, 1e-9)


def _pick_dtype(precision: str, device: torch.device) -> tuple[torch.dtype, dict[torch.dtype, float]]:
    """The autocast dtype for `precision`, and the device's peak FLOP/s per dtype where known."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
        peaks = {torch.bfloat16: peak, torch.float16: peak} if peak else {}
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision], peaks
    if device.type == "cpu":
        # nanoGPT and others stay in fp32 on CPU; CPUs with AVX512-BF16/AMX run bf16 matmuls several
        # times faster. "auto" starts from what big matmuls say; `choose_cpu_precision` then times the
        # real model, since small models lose to the casts.
        if precision == "fp16":
            raise ConfigError("precision fp16 is for GPUs; on CPU use bf16, fp32 or auto")
        peaks = {torch.float32: _matmul_flops(device, torch.float32)}
        if precision == "fp32":
            return torch.float32, peaks
        peaks[torch.bfloat16] = _matmul_flops(device, torch.bfloat16)
        if precision == "auto" and peaks[torch.bfloat16] < 1.2 * peaks[torch.float32]:
            return torch.float32, peaks
        return torch.bfloat16, peaks
    table = {"auto": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return table[precision], {}


def first_row(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch cut to its first row (tensors whose first dimension is the batch's)."""
    n = next(iter(batch.values())).shape[0]
    return {k: v[:1] if v.dim() and v.shape[0] == n else v for k, v in batch.items()}


def choose_cpu_precision(model: nn.Module, loss_fn, batch: dict[str, torch.Tensor], rt: Runtime) -> torch.dtype:
    """fp32 or bf16 autocast, whichever runs forward + backward of `batch` faster on this CPU.

    Big matmuls run several times faster in bf16 on CPUs with AVX512-BF16/AMX, but small models
    lose to the casts; timing the real model settles it. Gradients are zeroed afterwards and no RNG
    is drawn, so training is unaffected. All processes adopt rank 0's choice. On a CPU without bf16
    instructions bf16 is emulated, ~15x slower: one row of the batch in bf16 taking longer than the
    whole batch in fp32 settles it without timing the whole batch in bf16 (~a minute and a half per
    training stage for a 5M model on 2 cores).
    """

    def timed(dtype: torch.dtype, b: dict[str, torch.Tensor], repeats: int = 3) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with ctx:
                loss = loss_fn(model, b)
            loss.backward()
            best = min(best, time.perf_counter() - t)
        return best

    fp32 = timed(torch.float32, batch)
    bf16_faster = timed(torch.bfloat16, first_row(batch), repeats=1) < fp32 and timed(torch.bfloat16, batch) < fp32
    model.zero_grad(set_to_none=True)
    flag = torch.tensor([float(bf16_faster)])
    if rt.distributed:
        torch.distributed.broadcast(flag, src=0)
    return torch.bfloat16 if flag.item() else torch.float32


def setup_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None) -> Runtime:
    """Join torchrun's process group when launched by it, pick the device and autocast dtype.

    A second call with the same arguments returns the same runtime (the process group is joined once
    per process; `teardown_runtime` leaves it). Raises ConfigError for an unusable device or precision.
    """
    global _RUNTIME
    key = (device, precision, threads)
    if _RUNTIME is not None and _RUNTIME.info.get("key") == key:
        return _RUNTIME
    threads_before = _RUNTIME.info["threads_before"] if _RUNTIME is not None else torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    dtype, peaks = _pick_dtype(precision, dev)
    info = {"backend": "nccl" if dev.type == "cuda" else "gloo", "precision": precision, "key": key,
            "threads_before": threads_before}
    _RUNTIME = Runtime(dev, rank, world, local_rank, dtype, peaks, info)
    return _RUNTIME


def teardown_runtime() -> None:
    """Leave the process group (end of a torchrun job) and forget the runtime."""
    global _RUNTIME
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if _RUNTIME is not None:
        torch.set_num_threads(_RUNTIME.info["threads_before"])  # --threads applies to the run, not the process
    _RUNTIME = None


def wrap_model(model: nn.Module, rt: Runtime, strategy: str) -> nn.Module:
    """The model as the training step sees it: plain (one process), DDP, or FSDP2-sharded.

    FSDP2 shards each decoder layer, then the root (torchtitan's order); it needs a backend that
    supports it (NCCL; gloo on recent PyTorch). DDP is the default and works everywhere.
    """
    if not rt.distributed:
        return model
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # pragma: no cover - torch < 2.6
            raise ConfigError("--strategy fsdp needs PyTorch ≥ 2.6 (fully_shard); use --strategy ddp") from None
        layers = getattr(getattr(model, "model", None), "layers", None)
        for layer in layers or []:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / torch.compile wrappers (FSDP2 modifies in place: nothing to strip)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unwrap(model), FSDPModule)


def describe_hardware(rt: Runtime) -> dict[str, object]:
    """What a run ran on, for manifests and model cards: CPU model, cores, threads, device, GPU, processes."""
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    hw: dict[str, object] = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "device": str(rt.device), "world_size": rt.world_size,
                             "precision": str(rt.dtype).removeprefix("torch.")}  # fmt: skip
    if rt.device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(rt.device)
    return hw
