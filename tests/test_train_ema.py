"""The loop's weight average (`TrainConfig.ema`, `llmchain.train.ema.WeightEMA`).

Checks: the update is avg ← decay·avg + (1 − decay)·w and swapping twice restores the weights bit for bit;
training itself is unchanged by the average (the raw checkpoint weights equal a run without it); evals and the
returned model carry the average; a resumed run continues the same average bit for bit; a saved average that
does not match the model is a one-line error; off by default. Also the other time-budget option, the
linear LR schedule (`lr_schedule="linear"`).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from llmchain.config import TrainConfig
from llmchain.errors import UserError
from llmchain.train import checkpoint as ckpt
from llmchain.train.ema import WeightEMA
from llmchain.train.loop import fit, lr_at
from train_helpers import Regression, make_model, mse

pytestmark = pytest.mark.usefixtures("fresh_runtime")  # conftest: the loop's runtime is per process


def config(**kw) -> TrainConfig:
    base = dict(max_steps=20, lr=1e-2, warmup_steps=2, log_every=1, eval_every=0, save_every=0, threads=1,
                precision="fp32", batch_size=8)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_update_and_swap():
    model = make_model()
    ema = WeightEMA(model, decay=0.75)
    start = weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    moved = weights(model)
    ema.update()
    for a, s, m in zip(ema.avg, start, moved, strict=True):
        torch.testing.assert_close(a, 0.75 * s + 0.25 * m)
    with ema.swapped():
        for p, s in zip(model.parameters(), start, strict=True):
            torch.testing.assert_close(p.detach(), s + 0.25)
    for p, m in zip(model.parameters(), moved, strict=True):
        assert torch.equal(p.detach(), m)  # swapped back bit for bit
    with pytest.raises(ValueError, match="does not match the model"):
        ema.load_state_dict({"0.weight": torch.zeros(16, 4)})
    with pytest.raises(ValueError):
        WeightEMA(model, decay=1.0)


def test_average_is_the_final_model_and_training_is_unchanged(tmp_path):
    plain = make_model()
    fit(plain, Regression(), config(), tmp_path / "plain", loss_fn=mse, quiet=True)
    seen: list[list[torch.Tensor]] = []

    def eval_fn(model, rt):
        seen.append(weights(model))
        return {"loss": 0.0}

    model = make_model()
    result = fit(model, Regression(), config(ema=0.8), tmp_path / "ema", loss_fn=mse, eval_fn=eval_fn, quiet=True)
    step = result.checkpoint
    raw = load_file(step / "model.safetensors")
    for name, p in plain.named_parameters():
        assert torch.equal(raw[name], p.detach())  # the average does not touch training
    avg = ckpt.load_trainer(step)["ema"]
    for name, p in result.model.named_parameters():
        assert torch.equal(p.detach(), avg[name])  # the returned model is the average
        assert not torch.equal(p.detach(), raw[name])
    for w, (name, _) in zip(seen[-1], model.named_parameters(), strict=True):
        assert torch.equal(w, avg[name])  # the final eval ran on the average
    assert "ema" not in ckpt.load_trainer(tmp_path / "plain" / "checkpoints" / "step-20")  # off by default


def test_resume_continues_the_same_average(tmp_path):
    full = make_model()
    fit(full, Regression(), config(ema=0.9), tmp_path / "full", loss_fn=mse, quiet=True)
    cut = fit(make_model(), Regression(stop_at=10), config(ema=0.9), tmp_path / "cut", loss_fn=mse, quiet=True)
    assert not cut.completed and cut.step == 11
    resumed = make_model()
    fit(resumed, Regression(), config(ema=0.9, resume="auto"), tmp_path / "cut", loss_fn=mse, quiet=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a = ckpt.load_trainer(tmp_path / "full" / "checkpoints" / "step-20")["ema"]
    b = ckpt.load_trainer(tmp_path / "cut" / "checkpoints" / "step-20")["ema"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_average_is_a_user_error(tmp_path):
    fit(make_model(), Regression(), config(ema=0.9, max_steps=4), tmp_path / "r", loss_fn=mse, quiet=True)
    step = tmp_path / "r" / "checkpoints" / "step-4"
    trainer = ckpt.load_trainer(step)
    trainer["ema"] = {"bogus": torch.zeros(1)}
    ckpt.save_checkpoint(tmp_path / "r2", 4, make_model(), trainer, ckpt.default_save, keep=2)
    with pytest.raises(UserError, match="weight average does not match"):
        fit(make_model(), Regression(), config(ema=0.9, max_steps=8, resume="auto"), tmp_path / "r2", loss_fn=mse,
            quiet=True)  # fmt: skip
    with pytest.raises(ValidationError):
        config(ema=1.0)


def test_linear_schedule():
    cfg = TrainConfig(max_steps=110, lr=1.0, min_lr=0.0, warmup_steps=10, lr_schedule="linear")
    assert lr_at(cfg, 9, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 35, 0) == pytest.approx(0.75)
    assert lr_at(cfg, 110, 0) == pytest.approx(0.0)
    timed = TrainConfig(max_time=60, lr=1.0, min_lr=0.2, warmup_steps=0, lr_schedule="linear")
    assert lr_at(timed, 500, 15.0) == pytest.approx(0.8)
    assert lr_at(timed, 900, 60.0) == pytest.approx(0.2)


def test_schedule_end_first_follows_the_clock_when_it_ends_first():
    both = dict(max_steps=110, max_time=60, lr=1.0, min_lr=0.0, warmup_steps=10, lr_schedule="linear")
    steps_only = TrainConfig(**both)  # auto: max_steps rules, the clock only stops the run
    assert lr_at(steps_only, 35, 45.0) == pytest.approx(0.75)
    first = TrainConfig(**both, schedule_end="first")
    assert lr_at(first, 35, 45.0) == pytest.approx(0.25)  # 3/4 of the time gone: the clock is ahead
    assert lr_at(first, 35, 60.0) == pytest.approx(0.0)
    assert lr_at(first, 85, 6.0) == pytest.approx(0.25)  # the steps are ahead: they rule
    with pytest.raises(ValidationError):
        TrainConfig(**both, schedule_end="last")
