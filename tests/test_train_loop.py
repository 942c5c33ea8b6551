"""The generic training loop (`llmchain.train.loop.fit`) on a non-LM module: the API fine-tuning reuses.

Checks: loss falls; the LR schedule; checkpoints hold the model, trainer.pt (weights_only) and an index;
resume reproduces an uninterrupted run bit for bit; corrupt / half-written checkpoints are skipped with a
message; a run dir with checkpoints is not silently overwritten.
"""

from __future__ import annotations

import json

import pytest
import torch

from llmchain.config import TrainConfig
from llmchain.errors import ConfigError
from llmchain.train import checkpoint as ckpt
from llmchain.train.loop import fit, lr_at
from train_helpers import Regression, make_model, mse

pytestmark = pytest.mark.usefixtures("fresh_runtime")  # conftest: the loop's runtime is per process


def config(**kw) -> TrainConfig:
    base = dict(max_steps=20, lr=1e-2, warmup_steps=2, log_every=1, eval_every=0, save_every=10, threads=1,
                precision="fp32", batch_size=4, grad_accum=2)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, name="run", **kw):
    model = make_model()
    result = fit(model, Regression(), config(**kw), tmp_path / name, loss_fn=mse, quiet=True)
    return model, result


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("split", "train") == "train"]


def test_loss_falls_and_run_dir_has_logs(tmp_path):
    model, result = run(tmp_path, max_steps=40)
    assert result.completed and result.step == 40
    curve = losses(tmp_path / "run")
    assert len(curve) == 40 and sum(curve[-5:]) < 0.5 * sum(curve[:5])
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tb").iterdir())


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(cfg, 0, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 55, 0) == pytest.approx(0.55)
    assert lr_at(cfg, 100, 0) == pytest.approx(0.1)
    timed = TrainConfig(max_time=60, lr=1.0, min_lr=0.0, warmup_steps=0)
    assert lr_at(timed, 500, 30.0) == pytest.approx(0.5)


def test_checkpoint_contents(tmp_path):
    run(tmp_path, "full", max_steps=20)
    step = tmp_path / "full" / "checkpoints" / "step-20"
    assert {p.name for p in step.iterdir()} == {"model.safetensors", "trainer.pt", "checkpoint.json"}
    trainer = torch.load(step / "trainer.pt", weights_only=True)
    assert trainer["step"] == 20 and "state" in trainer["optimizer"] and "torch" in trainer["rng"]
    assert ckpt.verify_checkpoint(step) is None


def test_split_run_resume_equals_uninterrupted(tmp_path):
    # A run stopped at 10 of 20 steps (as a kill would leave it) and resumed gives the same weights.
    full, _ = run(tmp_path, "full", max_steps=20, save_every=10)
    model = make_model()
    fit(model, Regression(stop_at=10), config(max_steps=20), tmp_path / "cut", loss_fn=mse, quiet=True)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [11, 10]  # SIGTERM: after the step
    model = make_model()
    fit(model, Regression(), config(max_steps=20, resume="auto"), tmp_path / "cut", loss_fn=mse, quiet=True)
    for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sigterm_checkpoints_and_stops(tmp_path):
    model = make_model()
    result = fit(model, Regression(stop_at=5), config(max_steps=20, save_every=0), tmp_path / "r", loss_fn=mse,
                 quiet=True)  # fmt: skip
    assert not result.completed and result.stopped_by == "SIGTERM"
    assert result.step == 6 and result.checkpoint.name == "step-6"
    assert ckpt.verify_checkpoint(result.checkpoint) is None


def test_corrupt_and_half_written_checkpoints_are_skipped(tmp_path, capsys):
    run(tmp_path, max_steps=30, save_every=10, keep_checkpoints=3)
    root = tmp_path / "run" / "checkpoints"
    # step-30: flip bytes in the weights; step-20: the index never got written; plus a killed write's temp dir
    weights = root / "step-30" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    (root / "step-20" / "checkpoint.json").unlink()
    (root / "step-40.tmp-abc123").mkdir()
    model = make_model()
    result = fit(model, Regression(), config(max_steps=30, resume="auto"), tmp_path / "run", loss_fn=mse)
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step-30" in out and "corrupt" in out
    assert "step-20" in out and "did not finish" in out
    assert "resuming from" in out and "step-10" in out
    assert not (root / "step-40.tmp-abc123").exists()
    assert result.step == 30


def test_truncated_trainer_file_is_detected(tmp_path):
    run(tmp_path, max_steps=10, save_every=10)
    path = tmp_path / "run" / "checkpoints" / "step-10" / "trainer.pt"
    path.write_bytes(path.read_bytes()[:100])
    assert "truncated" in ckpt.verify_checkpoint(path.parent)


def test_existing_run_needs_resume_flag(tmp_path):
    run(tmp_path, max_steps=10)
    with pytest.raises(ConfigError, match="--resume auto"):
        run(tmp_path, max_steps=10)


def test_run_needs_an_end(tmp_path):
    with pytest.raises(ConfigError, match="max_steps"):
        run(tmp_path, max_steps=None)


def test_frozen_parameters_are_not_trained(tmp_path):
    model = make_model()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.clone()
    fit(model, Regression(), config(max_steps=5), tmp_path / "r", loss_fn=mse, quiet=True)
    assert torch.equal(model[0].weight, before)


@pytest.mark.parametrize("bf16_per_row,full_bf16_calls,chosen", [(10.0, 0, torch.float32), (0.1, 3, torch.bfloat16)])
def test_cpu_precision_probe_skips_the_whole_batch_in_bf16_when_one_row_is_slower(bf16_per_row, full_bf16_calls,
                                                                                   chosen):  # fmt: skip
    # a fake clock: fp32 costs 1 per row; bf16 costs `bf16_per_row` per row (emulated bf16: one row is already
    # slower than the 4-row batch in fp32, so the 4-row batch is never timed in bf16)
    from llmchain.train import distributed

    clock, calls = [0.0], []
    model = torch.nn.Linear(2, 1)

    def loss_fn(m, b):
        bf16 = torch.is_autocast_enabled("cpu")
        rows = b["x"].shape[0]
        calls.append((bf16, rows))
        clock[0] += rows * (bf16_per_row if bf16 else 1.0)
        return m(b["x"]).sum()

    rt = distributed.setup_runtime("cpu", "fp32", threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed.time, "perf_counter", lambda: clock[0])
        got = distributed.choose_cpu_precision(model, loss_fn, {"x": torch.ones(4, 2), "n": torch.tensor(7)}, rt)
    assert got == chosen and sum(1 for bf16, rows in calls if bf16 and rows == 4) == full_bf16_calls
    assert (True, 1) in calls and model.weight.grad is None  # the one-row screen ran; gradients are cleared
