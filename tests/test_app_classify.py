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
        "finetune.precision=fp32", "finetune_decoder.precision=fp32", "pretrain.precision=fp32",
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
    # the decoder's decision threshold was chosen on dev (threshold: val) and travels with the model
    cfg = json.loads((runner.output_of("finetune_decoder") / "config.json").read_text())
    assert 0.05 <= cfg["classifier_threshold"] <= 0.95


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


# --- the tables these applications meet -------------------------------------------------------------


def test_headerless_bom_quoted_csv_with_mixed_label_spellings_trains_and_evaluates_alike(tmp_path):
    """No --no-header: a first row that is data (a number, a boolean or a Chinese sentence in a cell) is
    sniffed as data; 1 / 1.0 / "1" are one class and true / TRUE another, in training and in eval."""
    from llmchain.data.tables import read_labelled, sniff_header

    assert not sniff_header(["很快，好吃", "pos"]) and not sniff_header(["TRUE", "ok"])
    rows = [("1", "很快，好吃，味道足"), ("1.0", "送餐快，量大"), ('"1"', "\"好评, 下次还来\""), ("0", "太慢了，菜都凉了"),
            ("0.0", "难吃，不会再点"), ("0", "\"差评, 汤洒了\"")] * 6  # fmt: skip
    data = tmp_path / "reviews.csv"
    data.write_bytes(("\ufeff" + "".join(f"{lab},{text}\n" for lab, text in rows)).encode())
    d = read_labelled(data, text_column=1, label_column=0)
    assert len(d) == 36 and set(d.labels) == {"0", "1"} and d.texts[2] == "好评, 下次还来"
    code, _, err = run_cli("finetune", "classify", "--model", "minilm", "--train", str(data), "--text-column", "1",
                           "--label-column", "0", "--max-steps", "1", "--batch-size", "8", "--max-length", "16",
                           "--out", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "run/best/config.json").read_text())["label2id"].keys() == {"0", "1"}
    code, _, err = run_cli("eval", "classify", "--model", str(tmp_path / "run/best"), "--train", str(data),
                           "--test", str(data), "--text-column", "1", "--label-column", "0",
                           "--out", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["labels"] == ["0", "1"] and report["n"] == 36 and not report["warnings"]


def test_eval_classify_group_column_from_the_command_line(tmp_path):
    data = tmp_path / "t.tsv"
    data.write_text("text\tlabel\ttopic\n" + "".join(f"{w} {i}\t{lab}\t{t}\n" for i in range(8) for w, lab, t in
                    (("good", 1, "a"), ("bad", 0, "a"), ("fine", 1, "b"), ("awful", 0, "b"))))  # fmt: skip
    code, _, err = run_cli("eval", "classify", "--train", str(data), "--test", str(data), "--group-column", "2",
                             "--out", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["groups"] == {"a": 16, "b": 16} and report["columns"][-2:] == ["macro_f1@a", "macro_f1@b"]
    nb = next(s for s in report["systems"] if s["name"] == "naive_bayes")
    assert nb["macro_f1@a"] == nb["macro_f1@b"] == 1.0  # each word is one class: perfectly separable
    code, _, err = run_cli("eval", "classify", "--train", str(data), "--test", str(data), "--group-column", "7",
                           "--out", str(tmp_path / "eval2"))  # fmt: skip
    assert code == 2 and "column index 7 is out of range" in err and "--group-column" in err


def test_bad_tables_are_one_line_exit_2_naming_the_file(tmp_path):
    one = tmp_path / "one_class.csv"
    one.write_text("text,label\ngood,1\nfine,1.0\ngreat,true\n".replace("true", "1"), encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    ok = tmp_path / "ok.csv"
    ok.write_text("text,label\ngood,1\nbad,0\n", encoding="utf-8")
    cases = [
        (["finetune", "classify", "--model", "minilm", "--train", str(one), "--out", str(tmp_path / "o")],
         f"{one}: only one class (1)"),
        (["eval", "classify", "--train", str(one), "--test", str(ok), "--out", str(tmp_path / "e")],
         f"{one}: only one class (1)"),
        (["eval", "classify", "--train", str(ok), "--test", str(ok), "--text-column", "9", "--out",
          str(tmp_path / "e")], f"{ok}: column index 9 is out of range"),
        (["finetune", "classify", "--model", "minilm", "--train", str(ok), "--label-column", "-3",
          "--out", str(tmp_path / "o")], f"{ok}: column index -3 is out of range"),
        (["eval", "classify", "--train", str(empty), "--test", str(ok), "--out", str(tmp_path / "e")],
         f"{empty}: the file is empty"),
        (["predict", "--model", str(tmp_path), "--input", str(empty)], "not a model directory"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run_cli(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_split_stage_is_deterministic_and_refuses_one_class(tmp_path):
    from llmchain.data.tables import split_labelled
    from llmchain.errors import UserError

    data = tmp_path / "d.csv"
    data.write_text("label,text\n" + "".join(f"{i % 3},text number {i}\n" for i in range(60)), encoding="utf-8")
    a = split_labelled(data, tmp_path / "a", seed=3)
    split_labelled(data, tmp_path / "b", seed=3)
    assert a == {"train": 42, "val": 6, "test": 12}
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
               for f in ("train.jsonl", "val.jsonl", "test.jsonl"))  # fmt: skip
    (tmp_path / "one.csv").write_text("label,text\n1,a b\n1.0,c d\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"one.csv: only one class \(\['1'\]\)"):
        split_labelled(tmp_path / "one.csv", tmp_path / "c")
