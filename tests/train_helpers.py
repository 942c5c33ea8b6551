"""Shared pieces of the generic-loop tests (tests/test_train_loop.py, tests/test_train_ema.py): a tiny
regression MLP, its loss and its batches (the runtime reset they need is conftest's `fresh_runtime`).
Imported by those files (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import os
import signal

import torch


class Regression:
    """y = sum(x): batches are a pure function of (step, rank). `stop_at`: fetching that step's batch
    sends this process SIGTERM, as a kill would (the loop finishes the step, checkpoints and returns)."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at

    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        if step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(8 * world_size, 4, generator=g)
        rows = slice(rank * 8, (rank + 1) * 8)
        return {"x": x[rows], "y": x.sum(-1, keepdim=True)[rows]}


def mse(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def make_model() -> torch.nn.Module:
    """The same seeded 4 → 16 → 1 MLP on every call."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
