"""Checkpoints of a run: `RUN/checkpoints/step-N/` = the model's files + `trainer.pt` + `checkpoint.json`.

`trainer.pt` holds the optimizer state (keyed by parameter name, so it loads under one process, DDP
or FSDP alike), the step, the schedule clock and the RNG states; it contains only tensors and plain
Python values, so it loads with `torch.load(weights_only=True)` (never unpickles code).
`checkpoint.json`, written last, lists every file with its size and sha256: a directory without it,
or whose files don't match it, is incomplete or corrupt and is skipped with a message on resume.
The whole directory is built under a temp name and renamed into place (`atomic_dir`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from llmchain.artifacts import atomic_dir, sha256_file

CHECKPOINTS = "checkpoints"
INDEX = "checkpoint.json"
TRAINER = "trainer.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")

SaveFn = Callable[[nn.Module, Path], None]
LoadFn = Callable[[nn.Module, Path], None]


# --- the model's part ---------------------------------------------------------------------------


def default_save(model: nn.Module, directory: Path) -> None:
    """Write the model's weights into `directory` in the most standard format it has.

    PEFT models save only their adapter (`save_pretrained`), HF models their full HF dir, our Llama an
    HF-format dir (`llmchain.model.io.save_model`), any other module a `model.safetensors`.
    """
    from llmchain.model.llama import Llama

    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    elif isinstance(model, Llama):
        from llmchain.model.io import save_model

        save_model(model, directory, manifest={"kind": "checkpoint"})
    else:
        from safetensors.torch import save_model as st_save

        st_save(model, str(directory / "model.safetensors"))


def default_load(model: nn.Module, directory: Path) -> None:
    """Load what `default_save` wrote back into `model` (in place). Raises ValueError on a mismatch."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config") and (directory / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter weights do not match the model: {result.unexpected_keys[:3]}")
        return
    state = load_file(directory / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied weight (lm_head = embeddings) is saved once; its twin is "missing" but already loaded.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in missing if not (k in params and id(params[k]) in loaded)]
    if missing or unexpected:
        raise ValueError(f"weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


# --- RNG ------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU + CUDA), numpy and Python RNG states as tensors / plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- write / find / read -------------------------------------------------------------------------


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, trainer: dict[str, Any], save_fn: SaveFn, keep: int
) -> Path:
    """Write `RUN/checkpoints/step-N` atomically; keep only the newest `keep` checkpoints. Returns the dir."""
    target = checkpoint_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        save_fn(model, tmp)
        torch.save(trainer, tmp / TRAINER)
        files = {
            p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        (tmp / INDEX).write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    for _, old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every `step-N` dir, newest first (complete or not)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete temp dirs left by a checkpoint write that was killed; returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    gone = [p for p in (root.iterdir() if root.is_dir() else []) if ".tmp-" in p.name or ".old-" in p.name]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def verify_checkpoint(directory: Path) -> str | None:
    """None when `directory` is a complete checkpoint whose files match its index, else the reason."""
    index = directory / INDEX
    if not index.is_file():
        return f"no {INDEX} (the write did not finish)"
    try:
        files = json.loads(index.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"unreadable {INDEX}"
    if TRAINER not in files:
        return f"no {TRAINER} listed in {INDEX}"
    for name, meta in files.items():
        p = directory / name
        if not p.is_file():
            return f"missing file {name}"
        if p.stat().st_size != meta["size"]:
            return f"{name} has {p.stat().st_size} bytes, expected {meta['size']} (truncated)"
        if sha256_file(p) != meta["sha256"]:
            return f"{name} does not match its sha256 (corrupt)"
    return None


def load_trainer(directory: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (tensors on CPU); raises on a bad file."""
    return torch.load(directory / TRAINER, map_location="cpu", weights_only=True)


def find_resume(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest complete checkpoint of the run, skipping (with a message) incomplete or corrupt ones."""
    for _, directory in list_checkpoints(run_dir):
        reason = verify_checkpoint(directory)
        if reason is None:
            return directory
        warn(f"skipping checkpoint {directory}: {reason}")
    return None
