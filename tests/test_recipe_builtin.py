"""The real stages through the recipe engine: a seconds-long copy of the quickstart chain (same stage
kinds, tiny sizes), its re-run rules, and the built-in recipes themselves (listed, shown, checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from llmchain.recipe import builtin_recipes, load_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src/llmchain/recipes"
CORPUS = RECIPES / "corpus/tinyshakespeare.txt"


def tiny_recipe(tmp_path: Path, min_chars: int = 1, vocab: int = 320) -> Path:
    """The quickstart's stages at toy sizes: ~60 KB of Shakespeare, a nano model, a few steps."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    quick = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    st = quick["stages"]
    st["data"]["inputs"] = {"raw": "corpus.txt"}
    # one document per speech (the quickstart has one document): a length threshold then removes some
    st["data"]["config"].update(reader={"text_unit": "paragraph"}, length={"min_chars": min_chars})
    st["tokenizer"]["config"] = {"vocab_size": vocab}
    st["pack"]["config"] = {"val_fraction": 0.1, "split_by": "documents"}
    st["pretrain"].pop("share")  # toy runs stop by max_steps alone
    st["pretrain"]["config"] = {"preset": "nano", "seq_len": 64, "batch_size": 4, "max_steps": 6, "warmup_steps": 2,
                                "eval_every": 0, "save_every": 0, "log_every": 2, "threads": 1}  # fmt: skip
    st["eval"]["config"] = {"task": "lm", "orders": [3], "max_tokens": 2000, "seq_len": 64}
    st["report"]["config"] = {"samples": 1, "sample_tokens": 8}
    st["export"]["config"] = {"format": "gguf", "dtype": "f16"}
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(quick, sort_keys=False))
    return path


def ran(plan) -> list[str]:
    return [s.stage.name for s in plan if s.run]


@pytest.mark.timeout(300)
def test_tiny_quickstart_chain_runs_then_reruns_only_what_changed(tmp_path, monkeypatch):
    # Pin the code version: other people editing the stage code while this runs must not re-run stages.
    monkeypatch.setattr("llmchain.recipe.code_version", lambda stage: "pinned")
    runs = tmp_path / "runs"
    everything = ["data", "tokenizer", "pack", "pretrain", "eval", "report", "export"]
    # `llmchain demo` runs the built-in quickstart: here, the tiny copy stands in for it
    monkeypatch.setattr("llmchain.recipe_file.BUILTIN_DIR", tmp_path)
    path = tiny_recipe(tmp_path)
    code, out, err = run_cli("demo", "--runs-dir", str(runs))
    assert code == 0, err
    for line in ("Model card:", "report/report.md", "llmchain serve ", "pretrain/final", "llmchain chat ",
                 "Validation: model ", "gram", "export/model-f16.gguf"):  # fmt: skip
        assert line in out, (line, out)
    run = runs / "quickstart"
    assert (run / "pretrain/final/model.safetensors").is_file()
    report = json.loads((run / "eval/report.json").read_text())
    assert [s["baseline"] for s in report["systems"]] == [False, True] and report["systems"][1]["order"] == 3
    assert (run / "report/report.md").is_file() and (run / "export/model-f16.gguf").is_file()
    assert json.loads((run / "export/manifest.json").read_text())["kind"] == "model-gguf"

    # nothing changed: nothing runs, and the CLI says so
    code, out, err = run_cli("demo", "--runs-dir", str(runs))
    assert code == 0 and "Nothing to do: all 7 stages" in out and "llmchain serve" in out, out + err
    code, out, err = run_cli("run", str(path), "--runs-dir", str(runs))
    assert code == 0 and "Nothing to do: all 7 stages" in out, out + err

    # a data filter threshold: data and everything downstream of it
    _, plan = run_recipe(tiny_recipe(tmp_path, min_chars=200), runs_dir=runs, log=lambda m: None)
    assert ran(plan) == everything and plan[0].reason == "config changed"
    # the tokenizer's vocabulary: not data (upstream), everything after the tokenizer
    _, plan = run_recipe(tiny_recipe(tmp_path, min_chars=200, vocab=300), runs_dir=runs, dry_run=True,
                         log=lambda m: None)  # fmt: skip
    assert ran(plan) == everything[1:] and plan[0].reason == "up to date"


def test_builtin_recipes_are_listed_shown_and_valid(monkeypatch, tmp_path):
    assert set(builtin_recipes()) >= {"quickstart", "sentiment", "chat-sft", "sentiment-zh", "moderation-zh", "topic"}
    code, out, err = run_cli("recipes")
    assert code == 0 and "quickstart" in out and "sentiment" in out and "chat-sft" in out
    code, out, err = run_cli("recipes", "show", "quickstart")
    assert code == 0 and yaml.safe_load(out)["name"] == "quickstart"
    quick = load_recipe("quickstart")
    assert [s.name for s in quick.stages] == ["data", "tokenizer", "pack", "pretrain", "eval", "report", "export"]
    assert quick.budget == 360 and quick.stage("pretrain").checked["max_time"] == 300  # 5 minutes of its 6
    # the others need data from outside the package: an unset variable is a one-line error naming it
    monkeypatch.delenv("LLMCHAIN_DATA", raising=False)
    code, out, err = run_cli("run", "sentiment", "--dry-run", "--runs-dir", str(tmp_path))
    assert code == 2 and "LLMCHAIN_DATA is not set" in err and "--input finetune.train=PATH" in err


def test_builtin_recipes_check_with_real_data(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    monkeypatch.setenv("BASE_MODEL", str(tmp_path))  # any existing path passes the input check
    for name in ("sentiment", "chat-sft", "summarize-zh", "summarize", "translate"):
        code, out, err = run_cli("run", name, "--dry-run", "--runs-dir", str(tmp_path / "runs"))
        assert code == 0 and "never" in out, err  # "never run", wrapped in a narrow table
    recipe = load_recipe("sentiment", inputs=[f"eval.data={shared_data / 'sst2/dev.tsv'}"])
    assert recipe.stage("eval").inputs["data"] == str((shared_data / "sst2/dev.tsv").resolve())


def test_recipe_stage_config_is_checked_before_anything_runs(tmp_path):
    path = tiny_recipe(tmp_path)
    code, out, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), "--set", "pretrain.lrr=1")
    assert code == 2 and "stage 'pretrain': config: field 'lrr'" in err, err
    code, out, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), "--set", "export.dtype=q4")
    assert code == 2 and "stage 'export'" in err and "q4" in err
    code, out, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), "--set", "pretrain.max_steps=null")
    assert code == 2 and "stage 'pretrain': set max_steps or max_time" in err, err
    assert not (tmp_path / "runs/quickstart/data").exists()


def _head(src: Path, dst: Path, lines: int) -> str:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]), encoding="utf-8")
    return str(dst)


@pytest.mark.timeout(300)
def test_sentiment_recipe_runs_on_a_slice_of_sst2(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    sst = shared_data / "sst2"
    inputs = [f"finetune.train={_head(sst / 'train.tsv', tmp_path / 'train.tsv', 161)}",
              f"finetune.val={_head(sst / 'dev.tsv', tmp_path / 'dev.tsv', 41)}",
              f"eval.data={_head(sst / 'test.tsv', tmp_path / 'test.tsv', 41)}", f"eval.train={tmp_path / 'train.tsv'}"]
    sets = ["finetune.max_steps=3", "finetune.batch_size=8", "finetune.max_length=32", "finetune.threads=1"]
    # the MiniLM half (test_app_classify.py runs the whole recipe, our decoder too)
    runner, plan = run_recipe("sentiment", runs_dir=tmp_path / "runs", inputs=inputs, overrides=sets, until="report",
                              log=lambda m: None)  # fmt: skip
    assert ran(plan) == ["finetune", "eval", "report"]
    report = json.loads((runner.run_dir / "eval/report.json").read_text())
    names = [s["name"] for s in report["systems"] if s["baseline"]]
    assert not report["systems"][0]["baseline"] and {"naive_bayes", "tfidf_logreg"} <= set(names)
    assert all(0 <= s["accuracy"] <= 1 for s in report["systems"])
    assert (runner.output_of("finetune") / "config.json").is_file() and (runner.run_dir / "report/report.md").is_file()


@pytest.mark.timeout(300)
def test_chat_sft_recipe_runs_on_a_tiny_base_model(shared_data, tmp_path, monkeypatch):
    import torch

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama, LlamaConfig
    from llmchain.tokenizer import train_tokenizer

    (tmp_path / "text.txt").write_text(CORPUS.read_text(encoding="utf-8")[:30_000])
    train_tokenizer(tmp_path / "text.txt", 320, tmp_path / "tok")
    torch.manual_seed(0)
    base = Llama(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, eos_token_id=0, bos_token_id=0, pad_token_id=1))  # fmt: skip
    save_model(base, tmp_path / "base", tokenizer_dir=tmp_path / "tok")
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    monkeypatch.setenv("BASE_MODEL", str(tmp_path / "base"))
    sets = ["finetune.max_steps=3", "finetune.batch_size=4", "finetune.seq_len=128", "finetune.threads=1",
            "eval.limit=3", "eval.max_new_tokens=8", "report.samples=1", "report.sample_tokens=8"]
    runner, plan = run_recipe("chat-sft", runs_dir=tmp_path / "runs", overrides=sets, log=lambda m: None)
    assert ran(plan) == ["finetune", "eval", "report", "export"]
    assert (runner.output_of("finetune") / "model.safetensors").is_file()
    gguf = runner.run_dir / "export/model-q8_0.gguf"
    from llmchain.model.export import read_gguf

    _, _, meta = read_gguf(gguf)
    assert "<|im_start|>" in meta["tokenizer.chat_template"] and meta["tokenizer.ggml.eot_token_id"] == 3
