"""The one training loop, used by pretraining, SFT (full and LoRA) and classification.

    result = fit(model, batches, config, run_dir, loss_fn=..., eval_fn=..., save_fn=..., load_fn=...)

- `model`: any `nn.Module` (our Llama, a PEFT-wrapped model, an HF classifier). The loop moves it to
  the device and wraps it (DDP or FSDP2 under torchrun, optionally `torch.compile`); only parameters
  with `requires_grad` are optimized.
- `batches`: an object with `get_batch(step, rank, world_size) -> dict[str, Tensor]` returning THIS
  process's rows for optimizer step `step` (`batch_size * grad_accum` rows; the loop splits them into
  `grad_accum` micro-batches along dim 0). It must be a pure function of (seed, step, rank): that is
  what makes a resumed run the same run, and a 2-process run equal to a 1-process run of the same
  global batch (rank r's rows = rows r·n … (r+1)·n − 1 of the global batch).
- `loss_fn(model, batch) -> scalar Tensor` (mean loss of the micro-batch). Default: `causal_lm_loss`
  (`model(input_ids, targets=targets)` for our Llama, `model(**batch).loss` for HF models).
- `eval_fn(model, runtime) -> dict[str, float]`: called on EVERY process, in eval mode, under no_grad
  and autocast, every `eval_every` steps and at the end; it splits its work by `runtime.rank` and
  sums with `runtime.all_reduce_sum`. Its dict is logged with split="val".
- `should_stop(metrics) -> bool` (optional): asked after each periodic eval with its dict; True ends
  the run there (early stopping; it must answer the same on every process).
- `save_fn(model, dir)` / `load_fn(model, dir)`: the model part of a checkpoint (default: PEFT adapter
  only, HF `save_pretrained`, our HF-format dir, else `model.safetensors`; see `checkpoint.py`).
  The loop adds `trainer.pt` (optimizer, step, schedule clock, RNG) and `checkpoint.json`.
- A submodule with `after_optimizer_step(lr, weight_decay)` is called after every optimizer step
  (the classifier's `TrainRowsEmbedding` uses it to decay the embedding rows it keeps out of AdamW).
- `config`: a `TrainConfig` (steps/time budget, batch, AdamW, schedule, precision, checkpoints...).
  With `config.ema` > 0 the loop keeps a moving average of the weights (`ema.WeightEMA`): evals
  run on it, the returned model carries it, checkpoints hold the raw weights plus the average.

Checkpoints go to `run_dir/checkpoints/step-N/` every `save_every` steps, at the end, on Ctrl-C and
on SIGTERM; `config.resume="auto"` continues from the newest complete one (corrupt or half-written
ones are skipped with a message). Returns a `FitResult`; `completed` is False when a signal stopped
the run. Raises ConfigError for unusable settings. Nothing here assumes CUDA exists.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from llmchain.errors import ConfigError, UserError
from llmchain.train import checkpoint as ckpt
from llmchain.train.distributed import (
    Runtime,
    choose_cpu_precision,
    is_fsdp,
    setup_runtime,
    unwrap,
    wrap_model,
)
from llmchain.train.ema import WeightEMA
from llmchain.train.monitor import Monitor, Throughput


class BatchSource(Protocol):
    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
EvalFn = Callable[[nn.Module, Runtime], dict[str, float]]


@dataclass
class FitResult:
    step: int  # optimizer steps done in total (across resumes)
    completed: bool  # False: stopped by a signal (a checkpoint was saved)
    stopped_by: str | None  # "SIGTERM", "SIGINT" or None
    tokens: int  # training tokens seen (all processes)
    elapsed_s: float  # wall time of the loop (across resumes)
    eval: dict[str, float] = field(default_factory=dict)  # the last eval's metrics
    checkpoint: Path | None = None  # the last checkpoint written
    model: nn.Module | None = None  # the trained, unwrapped model (main process; CPU copy under FSDP)
    precision: str = "float32"  # the autocast dtype the run used


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy: `targets` (our Llama, already shifted) or `labels` (HF models)."""
    if "targets" in batch:
        _, loss = model(batch["input_ids"], targets=batch["targets"])
        return loss
    return model(**batch).loss


def lr_at(config, step: int, elapsed: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine (or linear: `lr_schedule`) from `lr` to `min_lr`.

    The run's length is `max_steps` when set, else the `max_time` budget: progress is then elapsed
    time over the budget (so a time-budget run ends exactly at min_lr, but is not bit-reproducible).
    `schedule_end: first` with both set: progress is the larger of the two, so the LR reaches min_lr at
    whichever end comes first.
    """
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.max_steps:
        span = max(config.max_steps - config.warmup_steps, 1)
        progress = (step - config.warmup_steps) / span if step >= config.warmup_steps else 0.0
        if config.max_time and config.schedule_end == "first":
            progress = max(progress, elapsed / config.max_time)
    else:
        progress = elapsed / config.max_time
    progress = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "linear":
        return warm * (config.lr - (config.lr - min_lr) * progress)
    return warm * (min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases, scalars); fused where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": config.lr, "betas": (config.beta1, config.beta2)}
    # Fused AdamW is one kernel per step on CUDA (and on CPU in recent PyTorch); DTensor params (FSDP)
    # and other devices take the default implementation.
    if device.type in ("cuda", "cpu") and not is_fsdp(model):
        kwargs["fused"] = True
    try:
        return torch.optim.AdamW(groups, **kwargs)
    except (RuntimeError, TypeError):
        kwargs.pop("fused", None)
        return torch.optim.AdamW(groups, **kwargs)


class _Signals:
    """SIGTERM / first Ctrl-C set a flag (the loop checkpoints and stops); a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.caught: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.caught = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _split(batch: dict[str, torch.Tensor], parts: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    rows = next(iter(batch.values())).shape[0]
    if rows % parts:
        raise ValueError(f"a batch of {rows} rows cannot be split into {parts} micro-batches (grad_accum)")
    size = rows // parts
    nb = device.type == "cuda"
    return [{k: v[i * size:(i + 1) * size].to(device, non_blocking=nb) for k, v in batch.items()}
            for i in range(parts)]  # fmt: skip


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=opts)


def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _plain_model(model: nn.Module, rt: Runtime, factory: Callable[[], nn.Module] | None) -> nn.Module | None:
    """An unsharded module for saving: the model itself, or under FSDP a CPU copy built by `factory`."""
    if not is_fsdp(model):
        return unwrap(model) if rt.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not rt.is_main:
        return None
    copy = factory()
    copy.load_state_dict(state)
    return copy


def fit(
    model: nn.Module,
    batches: BatchSource,
    config,
    run_dir: str | Path,
    *,
    loss_fn: LossFn = causal_lm_loss,
    eval_fn: EvalFn | None = None,
    save_fn: ckpt.SaveFn = ckpt.default_save,
    load_fn: ckpt.LoadFn = ckpt.default_load,
    model_factory: Callable[[], nn.Module] | None = None,
    flops_per_token: float | None = None,
    quiet: bool = False,
    should_stop: Callable[[dict[str, float]], bool] | None = None,
) -> FitResult:
    """Train `model` on `batches` as `config` says; see the module docstring for the contract."""
    if not config.max_steps and not config.max_time:
        raise ConfigError("set max_steps (--max-steps N) or max_time (--max-time 5m): the run needs an end")
    rt = setup_runtime(config.device, config.precision, config.threads)
    if config.strategy == "fsdp" and rt.distributed and model_factory is None:
        raise ConfigError("--strategy fsdp needs a model_factory to gather the model for checkpoints")
    run_dir = Path(run_dir)
    say = print if (rt.is_main and not quiet) else (lambda *_: None)

    # Resume: load the model part before wrapping, the optimizer after building it.
    trainer: dict[str, Any] | None = None
    resume_dir = _resume_dir(config, run_dir, say, rt)
    if resume_dir is not None:
        try:
            trainer = ckpt.load_trainer(resume_dir)
            load_fn(model, resume_dir)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
            raise UserError(f"cannot resume from {resume_dir}: {e}") from None
        say(f"resuming from {resume_dir} (step {trainer['step']})")
    torch.manual_seed(config.seed)  # same init/dropout stream on every rank

    model.to(rt.device)
    model.train()
    wrapped = wrap_model(model, rt, config.strategy)
    optimizer = build_optimizer(wrapped, config, rt.device)
    if config.compile:
        wrapped = torch.compile(wrapped)
    step, elapsed_before, tokens_seen = 0, 0.0, 0
    if trainer is not None:
        _load_optimizer_state(unwrap(wrapped) if not is_fsdp(wrapped) else wrapped, optimizer, trainer["optimizer"])
        ckpt.set_rng_state(trainer["rng"])
        step, elapsed_before, tokens_seen = trainer["step"], trainer["elapsed_s"], trainer["tokens"]

    fsdp = is_fsdp(wrapped)
    ema = None
    if config.ema:
        if fsdp:
            raise ConfigError("ema is not supported with --strategy fsdp (the average would be sharded)")
        ema = WeightEMA(unwrap(wrapped), config.ema)
        if trainer is not None and trainer.get("ema") is not None:
            try:
                ema.load_state_dict(trainer["ema"])
            except ValueError as e:
                raise UserError(f"cannot resume from {resume_dir}: {e}") from None
        elif trainer is not None:
            say("the checkpoint has no weight average: it starts from the resumed weights")
    if config.precision == "auto" and trainer is not None and trainer.get("dtype") in _DTYPES:
        rt.dtype = _DTYPES[trainer["dtype"]]  # a resumed run keeps the precision it was measured to run best in
    elif config.precision == "auto" and rt.device.type == "cpu" and not fsdp:
        probe = _split(batches.get_batch(step, rt.rank, rt.world_size), config.grad_accum, rt.device)[0]
        rt.dtype = choose_cpu_precision(unwrap(wrapped), loss_fn, probe, rt)
        say(f"precision: {_dtype_name(rt.dtype)} (timed faster than the alternative on this CPU)")
    # fp16 (GPUs without bf16) needs loss scaling; for bf16/fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    if trainer is not None and trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    ddp = isinstance(unwrap_compiled(wrapped), torch.nn.parallel.DistributedDataParallel)
    mon = Monitor(run_dir, step, config.max_steps, config.max_time, quiet=quiet) if rt.is_main else None
    last_eval: dict[str, float] = {}
    last_ckpt: Path | None = None
    stopped_by: str | None = None
    early_stop = False  # should_stop said so after an eval (e.g. no better val metric for a while)
    t0 = time.perf_counter()
    meter = Throughput()
    loss_sum = torch.zeros((), device=rt.device)
    step_hooks = [m for m in model.modules() if hasattr(m, "after_optimizer_step")]
    # Clipping folded into fused AdamW (its grad_scale input); fp16's GradScaler uses that input itself.
    fold_clip = (bool(config.grad_clip) and optimizer.defaults.get("fused") and not scaler.is_enabled() and not fsdp
                 and hasattr(torch.nn.utils, "get_total_norm"))  # torch >= 2.6; older: a separate clip pass
    loss_count = 0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def save() -> Path | None:
        plain = _plain_model(wrapped, rt, model_factory)
        osd = _optimizer_state(wrapped, optimizer) if fsdp else None
        if rt.is_main and not fsdp:
            osd = _optimizer_state(unwrap(wrapped), optimizer)
        path = None
        if rt.is_main:
            state = {"step": step, "optimizer": osd, "rng": ckpt.rng_state(), "elapsed_s": elapsed(),
                     "tokens": tokens_seen, "world_size": rt.world_size, "dtype": _dtype_name(rt.dtype),
                     "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "format": 1}  # fmt: skip
            if ema is not None:
                state["ema"] = ema.state_dict()
            path = ckpt.save_checkpoint(run_dir, step, plain, state, save_fn, config.keep_checkpoints)
            mon.print(f"checkpoint: {path}")
        rt.barrier()
        return path

    def evaluate() -> dict[str, float]:
        if eval_fn is None:
            return {}
        wrapped.eval()
        with torch.no_grad(), rt.autocast(), (ema.swapped() if ema else contextlib.nullcontext()):
            metrics = eval_fn(wrapped, rt)
        wrapped.train()
        if mon is not None and metrics:
            mon.log({"step": step, "split": "val", **metrics})
        return metrics

    with _Signals() as signals:
        try:
            while True:
                if config.max_steps and step >= config.max_steps:
                    break
                # A signal or the clock may reach processes at different steps: under torchrun they agree
                # at every log step (the same steps everywhere), so all stop after the same step.
                if not rt.distributed or step % config.log_every == 0:
                    flag = torch.tensor([float(bool(signals.caught)),
                                         float(bool(config.max_time and elapsed() >= config.max_time))])
                    if rt.distributed:
                        flag = rt.all_reduce_max(flag.to(rt.device)).cpu()
                    if flag[0]:
                        stopped_by = signals.caught or "signal"
                    if flag.any():
                        break

                lr = lr_at(config, step, elapsed())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro = _split(batches.get_batch(step, rt.rank, rt.world_size), config.grad_accum, rt.device)
                for i, mb in enumerate(micro):
                    sync = not ddp or i == len(micro) - 1  # DDP: all-reduce gradients on the last micro-batch only
                    with (contextlib.nullcontext() if sync else unwrap_compiled(wrapped).no_sync()):
                        with rt.autocast():
                            loss = loss_fn(wrapped, mb)
                        scaler.scale(loss / len(micro)).backward()
                    loss_sum += loss.detach().float()
                    loss_count += 1
                    n_tok = mb["input_ids"].numel() if "input_ids" in mb else mb[next(iter(mb))].shape[0]
                    meter.add(n_tok * rt.world_size)
                    tokens_seen += n_tok * rt.world_size
                    if flops_per_token is None and hasattr(unwrap(wrapped), "flops_per_token") and "input_ids" in mb:
                        flops_per_token = unwrap(wrapped).flops_per_token(mb["input_ids"].shape[1])
                scaler.unscale_(optimizer)
                trained = [p for p in wrapped.parameters() if p.requires_grad]
                if fold_clip:
                    # clip_grad_norm_ would scale every gradient by min(1, clip / (norm + 1e-6)) in a pass of
                    # its own; fused AdamW divides by `grad_scale` inside its single pass instead.
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trained if p.grad is not None])
                    optimizer.grad_scale = (grad_norm + 1e-6).div(config.grad_clip).clamp(min=1.0)
                else:
                    grad_norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip or math.inf)
                scale = scaler.get_scale() if step_hooks and scaler.is_enabled() else 0.0
                scaler.step(optimizer)
                scaler.update()
                if step_hooks and (not scaler.is_enabled() or scaler.get_scale() >= scale):  # fp16: not skipped
                    for m in step_hooks:
                        m.after_optimizer_step(lr, config.weight_decay)
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update()
                step += 1

                if step % config.log_every == 0 or step == config.max_steps:
                    avg = rt.all_reduce_sum(loss_sum.clone()) / (loss_count * rt.world_size)
                    rate = meter.take()
                    if mon is not None:
                        mon.log(_train_record(config, step, avg, lr, grad_norm, rate, flops_per_token, rt,
                                              elapsed()))  # fmt: skip
                    loss_sum.zero_()
                    loss_count = 0
                if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                    last_eval = evaluate() or last_eval
                    if mon is not None:
                        mon.plot()
                    if should_stop is not None and should_stop(last_eval):
                        early_stop = True
                        if mon is not None:
                            mon.print(f"early stop at step {step}")
                        break
                if config.save_every and step % config.save_every == 0 and step != config.max_steps:
                    last_ckpt = save()
        except KeyboardInterrupt:
            # A second Ctrl-C: stop now, without a checkpoint (the step may be half done).
            if mon is not None:
                mon.print(f"aborted at step {step}; the last checkpoint is {last_ckpt or 'none'}")
                mon.close()
            raise

        # The end (steps or time) or a signal: a final eval when the run completed, then a checkpoint.
        completed = stopped_by is None
        if completed and not early_stop:  # an early stop has just evaluated this step
            last_eval = evaluate() or last_eval
        if last_ckpt is None or last_ckpt.name != f"step-{step}":
            last_ckpt = save() if step > 0 else last_ckpt
    if ema is not None:
        ema.swap()  # the returned (final) model is the average; the checkpoint above kept both
    if mon is not None:
        mon.plot()
        if stopped_by:
            mon.print(f"stopped by {stopped_by} at step {step}; continue with --resume auto")
        mon.close()
    result_model = _plain_model(wrapped, rt, model_factory)
    return FitResult(step, completed, stopped_by, tokens_seen, elapsed(), last_eval, last_ckpt, result_model,
                     _dtype_name(rt.dtype))


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _train_record(config, step, loss, lr, grad_norm, rate, flops_per_token, rt: Runtime, elapsed: float) -> dict:
    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    record = {"step": step, "loss": float(loss), "lr": lr, "grad_norm": float(gn), "tokens_per_s": rate,
              "elapsed_s": elapsed}  # fmt: skip
    if flops_per_token and rt.peak_flops:
        record["mfu"] = flops_per_token * rate / (rt.peak_flops * rt.world_size)
    if config.max_steps:
        record["eta_s"] = (config.max_steps - step) * elapsed / max(step, 1)
    if config.max_time:
        left = config.max_time - elapsed
        record["eta_s"] = min(record.get("eta_s", left), left)
    return record


def _resume_dir(config, run_dir: Path, say: Callable[[str], None], rt: Runtime) -> Path | None:
    """Which checkpoint to resume from (None: start fresh); ConfigError when the choice is unsafe."""
    if rt.is_main:
        for p in ckpt.remove_partial(run_dir):
            say(f"removed an unfinished checkpoint write: {p}")
    rt.barrier()
    resume = config.resume
    if resume in (None, "", "never", "none"):
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(f"{run_dir} already has checkpoints; pass --resume auto to continue it, or choose "
                              "another --out")  # fmt: skip
        return None
    if resume == "auto":
        return ckpt.find_resume(run_dir, say if rt.is_main else (lambda _: None))
    path = Path(resume)
    reason = ckpt.verify_checkpoint(path) if path.is_dir() else "not a directory"
    if reason:
        raise ConfigError(f"--resume {resume}: {reason}")
    return path
