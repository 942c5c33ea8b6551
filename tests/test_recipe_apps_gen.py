"""The `generate` and `customer-service` recipes end to end on tiny slices (toy models, a few steps), and the
wall-time budgets of every built-in recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmchain.recipe import builtin_recipes, load_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src/llmchain/recipes"
CORPUS = RECIPES / "corpus/tinyshakespeare.txt"
TINY_PRETRAIN = {"preset": "nano", "model": "{}", "seq_len": 64, "batch_size": 4, "max_steps": 4,
                 "warmup_steps": 1, "eval_every": 0, "save_every": 0, "log_every": 2, "threads": 1}


def ran(plan) -> list[str]:
    return [s.stage.name for s in plan if s.run]


@pytest.mark.timeout(300)
def test_generate_recipe_scores_both_languages_beside_ngrams(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    (tmp_path / "en.txt").write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    zh = tmp_path / "zh"
    zh.mkdir()
    novel = (shared_data / "zh_classical/hongloumeng_ch01-20.txt").read_text(encoding="utf-8")
    (zh / "novel.txt").write_text(novel[:10_000], encoding="utf-8")
    (zh / "README.md").write_text("An English note beside the corpus, as in the shared folder. " * 20)
    sets = [f"pretrain_{lang}.{k}={v}" for lang in ("en", "zh") for k, v in TINY_PRETRAIN.items()]
    sets += [
        "tokenizer_en.vocab_size=300",
        "tokenizer_zh.vocab_size=400",
        "eval_en.seq_len=64",
        "eval_zh.seq_len=64",
        "report_en.samples=1",
        "report_zh.samples=1",
        "report_en.sample_tokens=4",
        "report_zh.sample_tokens=4",
    ]
    inputs = [f"data_en.raw={tmp_path / 'en.txt'}", f"data_zh.raw={zh}"]
    runner, plan = run_recipe(
        "generate", runs_dir=tmp_path / "runs", inputs=inputs, overrides=sets, log=lambda m: None
    )
    assert len(ran(plan)) == 12
    docs = json.loads((runner.run_dir / "data_zh/stats.json").read_text())
    assert docs["kept"] == 1 and docs["removed"] == 1  # the language filter dropped the English note
    for lang in ("en", "zh"):
        report = json.loads((runner.run_dir / f"eval_{lang}/report.json").read_text())
        assert [s["name"] for s in report["systems"]] == ["model", "ngram3", "ngram5"]
        for s in report["systems"]:
            low, high = s["ci"]["bits_per_byte"]
            assert low < s["bits_per_byte"] < high
        card = (runner.run_dir / f"report_{lang}/report.md").read_text()
        assert "5-gram" in card and "95 %" in card


def _tiny_chat_base(tmp_path: Path) -> Path:
    import torch

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama, LlamaConfig
    from llmchain.tokenizer import train_tokenizer

    (tmp_path / "text.txt").write_text(CORPUS.read_text(encoding="utf-8")[:20_000])
    train_tokenizer(tmp_path / "text.txt", 300, tmp_path / "tok")
    torch.manual_seed(0)
    base = Llama(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, eos_token_id=0, bos_token_id=0,
                             pad_token_id=1))  # fmt: skip
    return save_model(base, tmp_path / "base", tokenizer_dir=tmp_path / "tok")


@pytest.mark.timeout(300)
def test_customer_service_recipe_gives_an_arena_ready_chat_model(shared_data, tmp_path, monkeypatch):
    base = _tiny_chat_base(tmp_path)
    monkeypatch.setenv("LLMCHAIN_DATA", str(shared_data))
    monkeypatch.setenv("BASE_MODEL", str(base))
    alpaca = json.loads((shared_data / "alpaca_1k/alpaca_data_1k.json").read_text(encoding="utf-8"))
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca[:40]))
    sets = ["eval.limit=3", "eval.max_new_tokens=4", "report.samples=2", "report.sample_tokens=4"]
    for stage in ("sft_alpaca", "finetune"):
        sets += [
            f"{stage}.max_steps=2",
            f"{stage}.batch_size=4",
            f"{stage}.seq_len=96",
            f"{stage}.threads=1",
            f"{stage}.samples=1",
            f"{stage}.sample_tokens=4",
        ]
    inputs = [f"sft_alpaca.train={tmp_path / 'alpaca.json'}"]
    runner, plan = run_recipe("customer-service", runs_dir=tmp_path / "runs", inputs=inputs, overrides=sets,
                              log=lambda m: None)  # fmt: skip
    assert ran(plan) == ["sft_alpaca", "finetune", "eval", "report"]
    final = runner.output_of("finetune")
    # arena-ready: a model dir with weights and a chat template, which the arena's engine loads
    assert (final / "model.safetensors").is_file()
    assert "<|im_start|>" in json.loads((final / "tokenizer_config.json").read_text())["chat_template"]
    metrics = [json.loads(x) for x in (runner.run_dir / "finetune/metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m.get("split") == "val"]
    assert val and val[-1]["loss"] > 0  # the validation loss of the held-out seed tasks
    assert (runner.run_dir / "finetune/samples/step-2.jsonl").is_file()  # sample replies after the eval
    report = json.loads((runner.run_dir / "eval/report.json").read_text())
    assert report["n"] == 3 and any(s["baseline"] for s in report["systems"])
    card = (runner.run_dir / "report/report.md").read_text()
    assert "My order arrived damaged" in card
    from llmchain.infer.engine import load_engine

    assert load_engine(final).tokenizer.chat_template


def test_every_builtin_recipe_has_a_budget_and_shares_within_it():
    import yaml

    assert {"generate", "customer-service"} <= set(builtin_recipes())
    for name, path in builtin_recipes().items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert raw.get("budget"), name
        shares = [s.get("share") or 0 for s in raw["stages"].values()]
        assert 0 < sum(shares) <= 1.0001, (name, shares)
    quick = load_recipe("quickstart")  # keeps its 5-minute pretrain, now 5/6 of a 6-minute budget
    assert quick.budget == 360 and quick.stage("pretrain").checked["max_time"] == 300
    doubled = load_recipe("quickstart", overrides=["budget=12m"])
    assert doubled.stage("pretrain").checked["max_time"] == 600


@pytest.mark.timeout(300)
def test_customer_service_index_stage_as_documented_builds_a_searchable_index(tmp_path, monkeypatch):
    import yaml

    from llmchain.rag.index import Index

    text = (RECIPES / "customer-service.yaml").read_text(encoding="utf-8")
    block = text[text.index("# --- index (optional)") : text.index("# --- end index")].splitlines()[1:]
    stage = yaml.safe_load("\n".join(line[1:] for line in block))  # the documented stage, uncommented
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "returns.md").write_text("Returns. You can return an item within 30 days for a full refund.\n")
    (docs / "shipping.md").write_text("Shipping. Orders ship within two business days from our warehouse.\n")
    monkeypatch.setenv("SUPPORT_DOCS", str(docs))
    recipe = tmp_path / "cs-index.yaml"
    recipe.write_text(yaml.safe_dump({"name": "cs-index", "stages": stage}))
    runner, plan = run_recipe(str(recipe), runs_dir=tmp_path / "runs", log=lambda m: None)
    assert ran(plan) == ["index"] and plan[0].summary["sources"] == 2
    with Index.open(runner.output_of("index")) as idx:
        hits = idx.search("how many days do I have to return something?", k=1).hits
    assert hits[0].source == "returns.md" and "30 days" in hits[0].text
