"""Shared pieces of the generic-loop tests (tests/test_train_loop.py, tests/test_train_ema.py): a tiny
regression MLP and its loss (the runtime reset they need is conftest's `fresh_runtime` fixture).
Imported by those files (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import torch


def mse(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def make_model() -> torch.nn.Module:
    """The same seeded 4 → 16 → 1 MLP on every call."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
