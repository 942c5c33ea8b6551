"""An exponential moving average (EMA) of a model's trained weights, for the loop's `ema` option.

    ema = WeightEMA(model, decay=0.99)   # starts as a copy of the weights
    ema.update()                         # after every optimizer step: avg += (1 - decay) * (w - avg)
    with ema.swapped(): evaluate(model)  # the model carries the average inside the block
    ema.swap()                           # ... or for good (the final model)

The average is an fp32 copy of every parameter with `requires_grad`, on the parameter's device; its
`state_dict()` (CPU tensors keyed by parameter name) goes into a checkpoint's trainer.pt, so a resumed
run continues the same average bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn


class WeightEMA:
    """The average of `model`'s trainable parameters with `decay` per update (0 < decay < 1)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.decay = decay
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.avg = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self.params]
        torch._foreach_lerp_(self.avg, current, 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the average (twice: back as before, bit for bit)."""
        for p, a in zip(self.params, self.avg, strict=True):
            held = p.detach().float().clone()
            p.copy_(a)
            a.copy_(held)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: a.detach().cpu().clone() for n, a in zip(self.names, self.avg, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a saved average; ValueError when it does not cover exactly these parameters."""
        if set(state) != set(self.names):
            missing, extra = sorted(set(self.names) - set(state)), sorted(set(state) - set(self.names))
            raise ValueError(f"the saved weight average does not match the model (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")  # fmt: skip
        with torch.no_grad():
            for n, a in zip(self.names, self.avg, strict=True):
                a.copy_(state[n])
