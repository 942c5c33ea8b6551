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


@pytest.mark.timeout(300)
def test_sentiment_zh_recipe_splits_one_file_and_trains_both_models(shared_data, tmp_path, monkeypatch):
    # waimai_10k is sorted by label: every 120th row gives both classes (test use only: it has no licence)
    data = _lines(shared_data / "waimai_10k_zh/waimai_10k.csv", tmp_path / "reviews.csv", 96, step=120)
    monkeypatch.setenv("SENTIMENT_ZH_DATA", data)
    runner, plan = run_recipe("sentiment-zh", runs_dir=tmp_path / "runs", overrides=TINY, log=lambda m: None)
    assert _ran(plan)[:3] == ["split_train", "split_val", "split_test"] and len(_ran(plan)) == 13
    parts = {p: [json.loads(x) for x in runner.output_of(f"split_{p}").read_text().splitlines()]
             for p in ("train", "val", "test")}  # fmt: skip
    with open(data, encoding="utf-8", newline="") as f:
        labels = [r["label"] for r in csv.DictReader(f)]
    counts = [labels.count(c) for c in ("0", "1")]
    test_n, val_n = sum(round(c * 0.2) for c in counts), sum(round(c * 0.1) for c in counts)  # per class
    assert [len(parts[p]) for p in ("train", "val", "test")] == [96 - test_n - val_n, val_n, test_n]
    assert all({r["label"] for r in rows} == {"0", "1"} for rows in parts.values())  # stratified
    texts = [r["text"] for rows in parts.values() for r in rows]
    assert len(set(texts)) == len(texts) == 96  # a partition: no review in two parts
    reports = _both_models_beside_baselines(runner)
    assert reports["eval"]["config"]["zh"] == "char" and reports["eval_decoder"]["n"] == test_n


def test_sentiment_zh_recipe_needs_its_data_named(monkeypatch, tmp_path):
    monkeypatch.delenv("SENTIMENT_ZH_DATA", raising=False)
    code, _, err = run_cli("run", "sentiment-zh", "--dry-run", "--runs-dir", str(tmp_path))
    assert code == 2 and "SENTIMENT_ZH_DATA is not set" in err and "--input split_train.data=PATH" in err


@pytest.mark.timeout(300)
def test_moderation_zh_recipe_reports_f1_per_topic(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    cold = shared_data / "cold_zh"
    train, dev, test = (_lines(cold / f"{s}.csv", tmp_path / f"{s}.csv", n, step=7) for s, n in
                        (("train", 64), ("dev", 24), ("test", 40)))  # fmt: skip
    inputs = [f"finetune.train={train}", f"finetune.val={dev}", f"eval.data={test}", f"eval.train={train}",
              f"corpus.raw={train}", f"finetune_decoder.train={train}", f"finetune_decoder.val={dev}",
              f"eval_decoder.data={test}", f"eval_decoder.train={train}"]  # fmt: skip
    runner, plan = run_recipe("moderation-zh", runs_dir=tmp_path / "runs", inputs=inputs, overrides=TINY,
                              log=lambda m: None)  # fmt: skip
    assert len(_ran(plan)) == 10
    reports = _both_models_beside_baselines(runner)
    with open(test, encoding="utf-8-sig", newline="") as f:
        topics = [row["topic"] for row in csv.DictReader(f)]
    report = reports["eval"]
    assert report["groups"] == {t: topics.count(t) for t in set(topics)} and len(report["groups"]) == 3
    for s in report["systems"]:
        for t in report["groups"]:
            assert 0 <= s[f"macro_f1@{t}"] <= 1 and f"macro_f1@{t}" in s["ci"]
    assert [c for c in report["columns"] if "@" in c] == [f"macro_f1@{t}" for t in sorted(report["groups"])]


@pytest.mark.timeout(300)
def test_topic_recipe_splits_headerless_ag_news(shared_data, tmp_path, monkeypatch):
    lines = (shared_data / "ag_news/test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news/test.csv").write_text("".join(lines[:120]), encoding="utf-8")
    monkeypatch.setenv("LLMCHAIN_DATA", str(tmp_path))
    runner, plan = run_recipe("topic", runs_dir=tmp_path / "runs", overrides=TINY, log=lambda m: None)
    assert len(_ran(plan)) == 13
    first = next(csv.reader(lines[:1]))
    train = [json.loads(x) for x in runner.output_of("split_train").read_text().splitlines()]
    test = [json.loads(x) for x in runner.output_of("split_test").read_text().splitlines()]
    # the first row is data, not a header: title + ". " + description, class from column 0
    assert {"text": f"{first[1]}. {first[2]}", "label": first[0]} in train + test
    assert {r["label"] for r in test} == {"1", "2", "3", "4"}
    _both_models_beside_baselines(runner)
