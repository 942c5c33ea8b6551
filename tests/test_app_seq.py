"""The sequence applications: the `pairs` stage (task files → SFT / eval / corpus JSONL), Chinese ROUGE by
characters and by jieba words, and the built-in recipes summarize-zh, summarize and translate end to end
on tiny slices of the real data (tiny model, a few steps, ten test items)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmchain.config import PairsConfig
from llmchain.data.pairs import pair_records, write_pairs
from llmchain.errors import UserError
from llmchain.eval.metrics import generation_metrics
from llmchain.recipe import run_recipe

# --- ROUGE over characters and jieba words -----------------------------------------------------------


def test_chinese_rouge_by_characters_and_by_jieba_words_on_a_hand_checked_pair():
    # jieba: 我们/喜欢/自然语言/处理 vs 我们/研究/自然语言/处理 — 3 of 4 words shared, 1 of 3 word bigrams;
    # characters: 8 of 10 shared, 6 of 9 bigrams (我们 自然 然语 语言 言处 处理), LCS 8
    m = generation_metrics(["我们喜欢自然语言处理"], [["我们研究自然语言处理"]])
    assert m["rouge1"] == pytest.approx(80.0) and m["rougeL"] == pytest.approx(80.0)
    assert m["rouge2"] == pytest.approx(100 * 6 / 9)
    assert m["rouge1_words"] == pytest.approx(75.0) and m["rougeL_words"] == pytest.approx(75.0)
    assert m["rouge2_words"] == pytest.approx(100 / 3)


def test_word_rouge_is_only_added_for_chinese_references():
    m = generation_metrics(["a cat sat", "the dog ran"], [["a cat sat down"], ["a dog ran"]])
    assert "rouge1_words" not in m and set(m["ci"]) >= {"rouge1", "bleu", "chrf"}


# --- the pairs stage ----------------------------------------------------------------------------------


def test_pairs_formats_and_leave_rows_out_split():
    prompts, refs = [f"source {i}" for i in range(7)], [[f"ref {i}a", f"ref {i}b"] for i in range(7)]
    sft = pair_records(prompts, refs, PairsConfig(format="sft", instruction="Do:", test_every=3, split="train"))
    # rows 0, 3, 6 are test; each training row gives one record per reference
    assert [r["input"] for r in sft[::2]] == ["source 1", "source 2", "source 4", "source 5"]
    assert sft[0] == {"instruction": "Do:", "input": "source 1", "output": "ref 1a"} and len(sft) == 8
    test = pair_records(prompts, refs, PairsConfig(format="eval", test_every=3, split="test", max_source_chars=5))
    assert test == [{"prompt": "sourc", "references": [f"ref {i}a", f"ref {i}b"]} for i in (0, 3, 6)]
    text = pair_records(prompts[:1], refs[:1], PairsConfig(format="text"))
    assert [r["text"] for r in text] == ["source 0", "ref 0a", "ref 0b"]


def test_pairs_line_aligned_files_and_mistakes(tmp_path):
    (tmp_path / "a.en").write_text("A dog.\nTwo cats.\n")
    (tmp_path / "a.de").write_text("Ein Hund.\nZwei Katzen.")  # the last line without its newline counts
    out = write_pairs(tmp_path / "a.en", tmp_path / "a.de", tmp_path / "sft", PairsConfig(format="sft",
                      instruction="Translate to German:"))  # fmt: skip
    rows = [json.loads(x) for x in Path(out["file"]).read_text().splitlines()]
    assert rows[1] == {"instruction": "Translate to German:", "input": "Two cats.", "output": "Zwei Katzen."}
    assert json.loads((tmp_path / "sft/manifest.json").read_text())["kind"] == "pairs-sft"
    with pytest.raises(UserError, match="instruction"):
        write_pairs(tmp_path / "a.en", tmp_path / "a.de", tmp_path / "x", PairsConfig(format="sft"))
    with pytest.raises(UserError, match="test_every"):
        write_pairs(tmp_path / "a.en", tmp_path / "a.de", tmp_path / "x", PairsConfig(format="eval", split="test"))
    (tmp_path / "short.de").write_text("Ein Hund.\n")
    with pytest.raises(UserError, match="line-aligned"):
        write_pairs(tmp_path / "a.en", tmp_path / "short.de", tmp_path / "x", PairsConfig(format="eval"))


# --- the recipes end to end, tiny ---------------------------------------------------------------------

TINY = ["budget=20s", "tokenizer.vocab_size=512", "pretrain.preset=nano", "pretrain.model={}", "pretrain.model.max_position_embeddings=160",
        "pretrain.max_steps=3", "pretrain.warmup_steps=1", "pretrain.precision=fp32", "pretrain.seq_len=64",
        "finetune.max_steps=3", "finetune.warmup_steps=1", "finetune.precision=fp32", "finetune.seq_len=128",
        "finetune.samples=0", "finetune.batch_size=4", "pretrain.threads=1", "finetune.threads=1", "eval.limit=10", "eval.max_new_tokens=6",
        "eval.device=auto", "report.samples=1", "report.sample_tokens=4"]  # fmt: skip


def run_tiny(tmp_path: Path, name: str, inputs: list[str], extra: list[str]) -> dict:
    runner, plan = run_recipe(name, runs_dir=tmp_path / "runs", overrides=TINY + extra, inputs=inputs,
                              log=lambda m: None)  # fmt: skip
    assert all(s.run for s in plan)
    run = tmp_path / "runs" / name
    assert (run / "finetune/final/model.safetensors").is_file() and (run / "report/report.md").is_file()
    report = json.loads((run / "eval/report.json").read_text())
    assert report["n"] == 10 and [s["name"] for s in report["systems"]] == ["model", "lead", "nearest"]
    for s in report["systems"]:  # every row carries its 95 % intervals, around its own value
        for metric in ("bleu", "chrf", "rougeL"):
            low, high = s["ci"][metric]
            assert low - 1e-9 <= s[metric] <= high + 1e-9, (s["name"], metric)
    assert any("95 % intervals" in note for note in report["notes"])
    return report


def test_summarize_zh_recipe_end_to_end_tiny(tmp_path, shared_data):
    lines = (shared_data / "csl_zh_title_summarization/dev.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("\n".join(lines[:1] + lines[41:51]) + "\n", encoding="utf-8")
    inputs = [f"{s}.source={tmp_path / f}" for s, f in (("corpus", "train.tsv"), ("train_pairs", "train.tsv"),
                                                         ("test_pairs", "test.tsv"))]  # fmt: skip
    report = run_tiny(tmp_path, "summarize-zh", inputs,
                      ["train_pairs.max_source_chars=40", "test_pairs.max_source_chars=40"])
    assert {"rougeL_words", "rouge1_words"} <= set(report["columns"])
    assert report["systems"][0]["ci"]["rougeL_words"] and "zh" in report["systems"][0]["bleu_signature"]
    assert report["config"]["instruction"] == "生成论文标题："
    # a user's own base model: the data stages as they are, no pretraining, SFT of that model
    import shutil

    base = shutil.copytree(tmp_path / "runs/summarize-zh/pretrain/final", tmp_path / "my-base")
    _, plan = run_recipe("summarize-zh", runs_dir=tmp_path / "runs", start="finetune", overrides=TINY + [
        "train_pairs.max_source_chars=40", "test_pairs.max_source_chars=40"], inputs=inputs + [
        f"finetune.model={base}"], log=lambda m: None)  # fmt: skip
    assert [s.stage.name for s in plan if s.run] == ["finetune", "eval", "report"]
    manifest = json.loads((tmp_path / "runs/summarize-zh/finetune/manifest.json").read_text())
    assert manifest["inputs"]["base_model"]["path"] == str(base)


def test_translate_recipe_end_to_end_tiny(tmp_path, shared_data):
    m30k = shared_data / "multi30k"
    inputs = []
    for lang in ("en", "de"):
        (tmp_path / f"train.{lang}").write_text("\n".join((m30k / f"val.{lang}").read_text().splitlines()[:40]))
        (tmp_path / f"test.{lang}").write_text("\n".join((m30k / f"test_2016_flickr.{lang}").read_text()
                                                         .splitlines()[:10]))  # fmt: skip
        role = "source" if lang == "en" else "target"
        inputs += [f"corpus.{role}={tmp_path / f'train.{lang}'}", f"train_pairs.{role}={tmp_path / f'train.{lang}'}",
                   f"test_pairs.{role}={tmp_path / f'test.{lang}'}"]  # fmt: skip
    report = run_tiny(tmp_path, "translate", inputs, [])
    assert "13a" in report["systems"][0]["bleu_signature"] and "rougeL_words" not in report["columns"]
    counts = json.loads((tmp_path / "runs/translate/finetune/manifest.json").read_text())["counts"]
    assert counts["train_examples"] + counts["val_examples"] == 40  # every training pair, none of the test


def test_summarize_opinosis_recipe_leaves_topics_out(tmp_path, shared_data):
    rows = (shared_data / "opinosis/opinosis.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "op.jsonl").write_text("\n".join(rows[:46]) + "\n", encoding="utf-8")  # 10 test topics
    inputs = [f"{s}.source={tmp_path / 'op.jsonl'}" for s in ("corpus", "train_pairs", "test_pairs")]
    report = run_tiny(tmp_path, "summarize", inputs, ["train_pairs.max_source_chars=150",
                                                      "test_pairs.max_source_chars=150"])  # fmt: skip
    test_topics = {json.loads(r)["topic"] for i, r in enumerate(rows[:46]) if i % 5 == 0}
    train = (tmp_path / "runs/summarize/train_pairs/train.jsonl").read_text(encoding="utf-8")
    tests = [json.loads(x) for x in (tmp_path / "runs/summarize/test_pairs/test.jsonl").read_text().splitlines()]
    assert len(tests) == len(test_topics) == 10 and all(len(t["references"]) >= 1 for t in tests)
    assert not any(t["prompt"][:100] in train for t in tests)  # no test topic's sentences in training
    assert report["n"] == 10


def test_sequence_recipes_share_their_budget(shared_data, monkeypatch):
    from llmchain.recipe import load_recipe

    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    for name, shares in (("summarize-zh", (0.55, 0.3)), ("summarize", (0.55, 0.3)), ("translate", (0.5, 0.35))):
        default, longer = load_recipe(name), load_recipe(name, overrides=["budget=30m"])
        assert default.budget == 900 and longer.budget == 1800
        for stage, share in zip(("pretrain", "finetune"), shares, strict=True):
            assert longer.stage(stage).config["max_time"] == pytest.approx(share * 1800)
        assert default.stage("eval").config["device"] == "auto"
        # SFT keeps its best eval and stops after 3 without a better one; with no `epochs` the LR schedule
        # spans the time share (100 epochs would set a schedule the share never reaches: the LR never decays)
        sft = default.stage("finetune").config
        assert sft["keep_best"] and sft["patience"] == 3 and sft["eval_every"] > 0 and "epochs" not in sft


def test_apps_seq_benchmark_plots_score_against_minutes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("apps_seq", Path(__file__).parents[1] / "benchmarks/apps_seq.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(budget_s: float, score: float) -> dict:
        model = {"name": "model", "baseline": False, "bleu": score, "ci": {"bleu": [score - 1, score + 1]}}
        base = {"name": "nearest", "baseline": True, "bleu": 9.0, "ci": {"bleu": [8.0, 10.0]}}
        return {"recipe": "translate", "budget_s": budget_s, "n": 10, "systems": [model, base]}

    out = bench.plot_curves([row(900, 5.0), row(180, 2.0)], tmp_path / "img/curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
