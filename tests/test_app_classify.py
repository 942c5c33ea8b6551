"""The classification applications (recipes sentiment, sentiment-zh, moderation-zh, topic) end to end on
slices of real data with tiny budgets — MiniLM and our own decoder side by side, each beside the
baselines — plus the labelled-table edge cases they meet: headerless / BOM / quoted CSV, mixed label
spellings, one-class files, bad column indices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli
from llmchain.recipe import run_recipe

# Tiny everything: a nano decoder, a few steps, short texts; the recipes' real budgets are minutes.
TINY = ["finetune.max_steps=2", "finetune.batch_size=8", "finetune.max_length=32", "finetune.threads=1",
        "tokenizer.vocab_size=300", "pretrain.preset=nano", "pretrain.max_steps=2", "pretrain.seq_len=32",
        "pretrain.batch_size=4", "pretrain.warmup_steps=1", "pretrain.threads=1",
        "finetune_decoder.max_steps=2", "finetune_decoder.batch_size=8", "finetune_decoder.max_length=32",
        "finetune_decoder.threads=1", "report.explain=0", "report_decoder.explain=0"]  # fmt: skip


def _lines(src: Path, dst: Path, n: int, step: int = 1) -> str:
    """The header and every `step`-th of the first n·step data lines (spread over sorted files)."""
    lines = src.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    dst.write_text(lines[0] + "".join(lines[1 : 1 + n * step : step]), encoding="utf-8")
    return str(dst)


def _ran(plan) -> list[str]:
    return [s.stage.name for s in plan if s.run]


def _both_models_beside_baselines(runner) -> dict[str, dict]:
    reports = {}
    for stage in ("eval", "eval_decoder"):
        report = json.loads((runner.run_dir / stage / "report.json").read_text())
        names = [s["name"] for s in report["systems"]]
        assert names[0] == "model" and {"naive_bayes", "tfidf_logreg"} <= set(names), names
        assert all(0 <= s["accuracy"] <= 1 and s["ci"]["accuracy"][0] <= s["accuracy"] <= s["ci"]["accuracy"][1]
                   for s in report["systems"])  # fmt: skip
        reports[stage] = report
    cfg = json.loads((runner.output_of("finetune_decoder") / "config.json").read_text())
    assert cfg["model_type"] in ("llama", "qwen2", "mistral")  # our decoder with its last-token head
    assert (runner.run_dir / "report/report.md").is_file() and (runner.run_dir / "report_decoder/report.md").is_file()
    return reports


@pytest.mark.timeout(300)
def test_sentiment_recipe_trains_minilm_and_our_decoder(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    sst = shared_data / "sst2"
    train, dev, test = (_lines(sst / f"{s}.tsv", tmp_path / f"{s}.tsv", n) for s, n in
                        (("train", 64), ("dev", 24), ("test", 24)))  # fmt: skip
    inputs = [f"finetune.train={train}", f"finetune.val={dev}", f"eval.data={test}", f"eval.train={train}",
              f"corpus.raw={train}", f"finetune_decoder.train={train}", f"finetune_decoder.val={dev}",
              f"eval_decoder.data={test}", f"eval_decoder.train={train}"]  # fmt: skip
    runner, plan = run_recipe("sentiment", runs_dir=tmp_path / "runs", inputs=inputs, overrides=TINY,
                              log=lambda m: None)  # fmt: skip
    assert _ran(plan) == ["finetune", "eval", "report", "corpus", "tokenizer", "pack", "pretrain",
                          "finetune_decoder", "eval_decoder", "report_decoder"]  # fmt: skip
    reports = _both_models_beside_baselines(runner)
    assert reports["eval"]["n"] == 24
