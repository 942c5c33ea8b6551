"""`llmchain pretrain` on real text (tinyshakespeare from ../shared/data): the loss falls; N steps + SIGKILL +
resume N steps is bit-identical to 2N uninterrupted steps (CPU, fp32); SIGTERM checkpoints and exits 130;
2-process torchrun DDP and FSDP2 runs match a 1-process run of the same global batch; RUN/final is a
servable HF dir; bad flags/configs exit 2 with one line.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_cli, sigterm_at

# Tiny and single-threaded: the CI machine has 2 cores shared with other work.
CORE = ["--preset", "nano", "--batch-size", "4", "--seq-len", "32", "--threads", "1", "--precision", "fp32",
        "--warmup-steps", "2", "--lr", "3e-3"]  # fmt: skip
TINY = [*CORE, "--eval-every", "0", "--quiet"]


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory) -> Path:
    """Tokenizer (BPE 512) + shards (90/10 character split) of the first 200k characters of tinyshakespeare."""
    from llmchain.data.pack import pack_documents
    from llmchain.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("shakespeare")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    (root / "input.txt").write_text(text, encoding="utf-8")
    train_tokenizer(root / "input.txt", 512, root / "tok")
    pack_documents(root / "input.txt", root / "tok", root / "shards", val_fraction=0.1, split_by="chars", workers=1)
    return root / "shards"


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _records(run_dir: Path, split: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split", "train") == split]


def _weights(model_dir: Path) -> dict:
    return load_file(model_dir / "model.safetensors")


def test_loss_falls_on_tinyshakespeare_and_final_is_servable(shards, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli("pretrain", "--data", str(shards), "--out", str(out), "--max-steps", "60",
                           *CORE, "--eval-every", "30", "--quiet")  # fmt: skip
    assert code == 0, err
    train, val = _records(out), _records(out, "val")
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert val[1]["loss"] < math.log(512) - 1.0  # ln(512) ≈ 6.24 is the loss of a uniform guess
    assert [r["step"] for r in val] == [30, 60] and val[1]["loss"] < val[0]["loss"]
    assert 0 < val[1]["bits_per_byte"] < 4 and val[1]["perplexity"] > 1
    assert {"tokens_per_s", "lr", "grad_norm", "mfu"} <= set(train[-1])
    for name in ("config.yaml", "loss.png", "final/config.json", "final/tokenizer.json", "final/manifest.json"):
        assert (out / name).is_file(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(out / "final")  # opens in transformers as-is
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert hf.config.vocab_size == 512 and tok.eos_token_id == hf.config.eos_token_id


def test_dropout_flag_reaches_the_model_config(shards, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli("pretrain", "--data", str(shards), "--out", str(out), "--max-steps", "3",
                           "--dropout", "0.1", *TINY)  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "final" / "config.json").read_text())["dropout"] == 0.1


def _pretrain_subprocess(args: list[str], slow_from: int) -> subprocess.Popen:
    """`llmchain pretrain ARGS` in a child whose steps ≥ `slow_from` take 0.5 s, so a test can kill it there."""
    code = (
        "import sys, time\n"
        "import llmchain.train.pretrain as p\n"
        "get = p.TokenShards.get_batch\n"
        f"p.TokenShards.get_batch = lambda self, s, r, w: (time.sleep(0.5) if s >= {slow_from} else None) or "
        "get(self, s, r, w)\n"
        "from llmchain.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, "pretrain", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_sigkill_then_resume_is_bit_identical(shards, tmp_path):
    args = ["--data", str(shards), "--max-steps", "16", "--save-every", "8", "--log-every", "1", *TINY]
    code, _, err = run_cli("pretrain", *args, "--out", str(tmp_path / "full"))
    assert code == 0, err

    cut = tmp_path / "cut"
    proc = _pretrain_subprocess([*args, "--out", str(cut)], slow_from=8)
    _wait_for(cut / "checkpoints" / "step-8" / "checkpoint.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "final").exists()
    code, _, err = run_cli("pretrain", "--out", str(cut), "--resume", "auto")  # the run's own config.yaml
    assert code == 0, err
    full, resumed = _weights(tmp_path / "full" / "final"), _weights(cut / "final")
    assert full.keys() == resumed.keys()
    for k in full:
        assert (full[k] == resumed[k]).all(), k
    assert [r["step"] for r in _records(cut)] == list(range(1, 17))  # the log reads as one run
    assert [r["loss"] for r in _records(cut)] == [r["loss"] for r in _records(tmp_path / "full")]


def test_sigterm_saves_a_checkpoint_and_exits_130(shards, tmp_path):
    import llmchain.train.pretrain as pretrain

    out = tmp_path / "run"
    with sigterm_at(pretrain.TokenShards, 3):
        code, _, err = run_cli("pretrain", "--data", str(shards), "--out", str(out), "--max-steps", "40", *TINY)
    assert code == 130
    assert "stopped by SIGTERM at step 4" in err and "--resume auto" in err and len(err.splitlines()) == 1
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"] and not (out / "final").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_ddp_and_fsdp_two_processes_match_one_process(shards, tmp_path):
    common = ["--data", str(shards), "--max-steps", "4", "--log-every", "1", *TINY]
    code, _, err = run_cli("pretrain", *common, "--out", str(tmp_path / "one"), "--batch-size", "4")
    assert code == 0, err
    one = _records(tmp_path / "one")
    w1 = _weights(tmp_path / "one" / "final")
    for strategy in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "llmchain", "pretrain", *common, "--out", str(tmp_path / strategy),
               "--batch-size", "2", "--strategy", strategy]  # fmt: skip
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        two = _records(tmp_path / strategy)
        assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
        for a, b in zip(one, two, strict=True):
            assert abs(a["loss"] - b["loss"]) < 1e-4, (strategy, a, b)
        w2 = _weights(tmp_path / strategy / "final")
        assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4, strategy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-steps", "5"], "field 'data'"),
        (["--max-steps", "5", "--precision", "fp8"], "precision"),
        (["--max-time", "soon"], "not a duration"),
        (["--preset", "gigantic", "--max-steps", "5"], "unknown preset"),
        (["--max-steps", "0"], "max_steps"),
        ([], "--max-steps"),
        (["--max-steps", "5", "--batch-size", "-1"], "batch_size"),
        (["--max-steps", "5", "--dropout", "1.5"], "dropout"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(shards, tmp_path, args, message):
    base = ["--out", str(tmp_path / "r")] + ([] if "field 'data'" in message else ["--data", str(shards)])
    code, out, err = run_cli("pretrain", *base, *args)
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_bad_inputs_give_one_line_and_exit_2(shards, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [unclosed\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rate: 0.1\n")
    cases = [
        (["--data", str(tmp_path / "nowhere"), "--max-steps", "5"], "not a token-shards dir"),
        (["--config", str(bad_yaml)], "invalid YAML"),
        (["--config", str(typo), "--data", str(shards)], "learning_rate"),
        (["--data", str(shards), "--max-steps", "5", "--seq-len", "100000"], "seq-len"),
        (["--data", str(shards), "--max-steps", "5", "--resume", str(tmp_path)], "--resume"),
    ]
    for args, message in cases:
        code, _, err = run_cli("pretrain", "--out", str(tmp_path / "r"), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_unknown_option_exits_2(tmp_path):
    code, _, err = run_cli("pretrain", "--no-such-flag")
    assert code == 2 and "no-such-flag" in err
