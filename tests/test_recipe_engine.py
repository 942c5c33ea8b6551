"""The recipe engine: order, up-to-date checks, re-run rules, --only/--from, and one-line errors.

Uses three tiny fake stages (seconds, no torch) registered under test-only names; the same engine runs
the real stages of the built-in recipes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from llmchain.errors import UserError
from llmchain.recipe import Runner, StageType, load_recipe, register_stage, run_recipe

CALLS: Counter = Counter()


def _filter(ctx):  # keep the lines of the raw file that are at least `min_len` long
    CALLS[ctx.name] += 1
    lines = [x for x in ctx.inputs["raw"].read_text().splitlines() if len(x) >= ctx.config.get("min_len", 0)]
    ctx.out_dir.mkdir(parents=True)
    (ctx.out_dir / "docs.txt").write_text("\n".join(lines))
    return {"documents": len(lines)}


def _vocab(ctx):
    CALLS[ctx.name] += 1
    text = (ctx.inputs["documents"] / "docs.txt").read_text()
    ctx.out_dir.mkdir(parents=True)
    (ctx.out_dir / "vocab.json").write_text(json.dumps(sorted(set(text))[: ctx.config.get("size", 1000)]))


def _train(ctx):
    CALLS[ctx.name] += 1
    if ctx.config.get("fail"):
        ctx.out_dir.mkdir(parents=True)
        raise RuntimeError("killed halfway")
    vocab = json.loads((ctx.inputs["tokenizer"] / "vocab.json").read_text())
    docs = (ctx.inputs["documents"] / "docs.txt").read_text()
    (ctx.out_dir / "final").mkdir(parents=True)
    (ctx.out_dir / "final" / "model.txt").write_text(f"{len(vocab)} {len(docs)}")


register_stage(StageType("t_filter", _filter, inputs=("raw",)))
register_stage(StageType("t_vocab", _vocab, inputs=("documents",)))
register_stage(StageType("t_train", _train, inputs=("documents", "tokenizer"), output="final"))


def write_recipe(tmp_path: Path, **changes) -> Path:
    raw = tmp_path / "raw.txt"
    if not raw.exists():
        raw.write_text("a short line\nthis is a much longer line of text\nmid length\n")
    recipe = {
        "name": "toy",
        "stages": {
            "data": {"type": "t_filter", "inputs": {"raw": "raw.txt"}, "config": {"min_len": 5}},
            "tokenizer": {"type": "t_vocab", "inputs": {"documents": "data"}, "config": {"size": 100}},
            "pretrain": {"type": "t_train", "inputs": {"documents": "data", "tokenizer": "tokenizer"}},
        },
    }
    for stage, cfg in changes.items():
        recipe["stages"][stage].setdefault("config", {}).update(cfg)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def ran(plan) -> list[str]:
    return [s.stage.name for s in plan if s.run]


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()


def test_first_run_runs_all_in_order_and_second_run_does_nothing(tmp_path):
    path = write_recipe(tmp_path)
    runner, plan = run_recipe(path, runs_dir=tmp_path / "runs", log=lambda m: None)
    assert ran(plan) == ["data", "tokenizer", "pretrain"]
    assert (tmp_path / "runs/toy/pretrain/final/model.txt").is_file()
    _, plan = run_recipe(path, runs_dir=tmp_path / "runs", log=lambda m: None)
    assert ran(plan) == [] and [s.reason for s in plan] == ["up to date"] * 3
    assert CALLS == Counter(data=1, tokenizer=1, pretrain=1)
    code, out, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 0 and "Nothing to do" in out and CALLS["data"] == 1


def test_changing_a_threshold_reruns_that_stage_and_downstream_only(tmp_path):
    runs = tmp_path / "runs"
    run_recipe(write_recipe(tmp_path), runs_dir=runs, log=lambda m: None)
    # data's threshold: data and everything after it
    _, plan = run_recipe(write_recipe(tmp_path, data={"min_len": 11}), runs_dir=runs, log=lambda m: None)
    assert ran(plan) == ["data", "tokenizer", "pretrain"]
    assert plan[0].reason == "config changed" and plan[1].reason == "input 'documents' changed"
    # the tokenizer's config: not data (upstream)
    _, plan = run_recipe(write_recipe(tmp_path, data={"min_len": 11}, tokenizer={"size": 3}), runs_dir=runs,
                         log=lambda m: None)  # fmt: skip
    assert ran(plan) == ["tokenizer", "pretrain"]
    assert CALLS == Counter(data=2, tokenizer=3, pretrain=3)


def test_changed_input_file_and_deleted_output_rerun(tmp_path):
    runs = tmp_path / "runs"
    path = write_recipe(tmp_path)
    run_recipe(path, runs_dir=runs, log=lambda m: None)
    (tmp_path / "raw.txt").write_text("completely different text here\n")
    _, plan = run_recipe(path, runs_dir=runs, log=lambda m: None)
    assert ran(plan) == ["data", "tokenizer", "pretrain"] and plan[0].reason == "input 'raw' changed"
    (runs / "toy/pretrain/final/model.txt").unlink()
    _, plan = run_recipe(path, runs_dir=runs, dry_run=True, log=lambda m: None)
    assert ran(plan) == ["pretrain"] and plan[2].reason == "output modified"


def test_upstream_rerun_with_identical_output_leaves_downstream_alone(tmp_path):
    runs = tmp_path / "runs"
    run_recipe(write_recipe(tmp_path), runs_dir=runs, log=lambda m: None)
    # min_len 6 keeps the same lines as 5: data re-runs, its output is byte-identical, the rest is up to date
    _, plan = run_recipe(write_recipe(tmp_path, data={"min_len": 6}), runs_dir=runs, log=lambda m: None)
    assert ran(plan) == ["data"] and CALLS["tokenizer"] == 1
    assert plan[1].reason.startswith("up to date")


def test_only_and_from_force_the_selected_stages(tmp_path):
    runs = tmp_path / "runs"
    path = write_recipe(tmp_path)
    with pytest.raises(UserError, match="input 'documents'.*does not exist"):
        run_recipe(path, runs_dir=runs, only="tokenizer", log=lambda m: None)
    run_recipe(path, runs_dir=runs, log=lambda m: None)
    _, plan = run_recipe(path, runs_dir=runs, only="tokenizer", log=lambda m: None)
    assert ran(plan) == ["tokenizer"] and plan[1].reason == "forced"
    _, plan = run_recipe(path, runs_dir=runs, start="tokenizer", log=lambda m: None)
    assert ran(plan) == ["tokenizer", "pretrain"]
    _, plan = run_recipe(path, runs_dir=runs, until="tokenizer", force=True, log=lambda m: None)
    assert ran(plan) == ["data", "tokenizer"] and plan[2].reason == "not selected"
    code, out, err = run_cli("run", str(path), "--runs-dir", str(runs), "--from", "nope")
    assert code == 2 and "--from nope" in err


def test_dry_run_reports_without_running(tmp_path):
    path = write_recipe(tmp_path)
    code, out, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run")
    assert code == 0 and "never run" in out and not CALLS and not (tmp_path / "runs/toy/data").exists()


def test_interrupted_stage_reruns_and_later_succeeds(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError):
        run_recipe(write_recipe(tmp_path, pretrain={"fail": True}), runs_dir=runs, log=lambda m: None)
    _, plan = run_recipe(write_recipe(tmp_path, pretrain={"fail": True}), runs_dir=runs, dry_run=True,
                         log=lambda m: None)  # fmt: skip
    assert ran(plan) == ["pretrain"] and plan[2].reason == "interrupted run (resuming)"
    _, plan = run_recipe(write_recipe(tmp_path), runs_dir=runs, log=lambda m: None)
    assert ran(plan) == ["pretrain"] and plan[2].reason == "interrupted run (starting over: config changed)"


def test_set_overrides_a_config_field(tmp_path):
    runs = tmp_path / "runs"
    path = write_recipe(tmp_path)
    run_recipe(path, runs_dir=runs, log=lambda m: None)
    _, plan = run_recipe(path, runs_dir=runs, overrides=["tokenizer.size=2"], log=lambda m: None)
    assert ran(plan) == ["tokenizer", "pretrain"]
    assert len(json.loads((runs / "toy/tokenizer/vocab.json").read_text())) == 2


def _bad_recipe(tmp_path, stages) -> str:
    (tmp_path / "raw.txt").write_text("x\n")
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "stages": stages}))
    return str(p)


@pytest.mark.parametrize(
    "stages, expected",
    [
        ({"data": {"type": "t_filter", "inputs": {"raw": "raw.txt"}}, "train": {"inputs": {}}},
         "stage 'train': unknown stage type 'train'"),
        ({"data": {"type": "t_filter", "inputs": {}}}, "stage 'data': missing input 'raw'"),
        ({"data": {"type": "t_filter", "inputs": {"raw": "nothing.txt"}}},
         "stage 'data': input 'raw': 'nothing.txt' is neither a stage of this recipe nor an existing path"),
        ({"a": {"type": "t_vocab", "inputs": {"documents": "b"}}, "b": {"type": "t_vocab", "inputs": {"documents": "a"}}},
         "stages form a cycle: a → b → a"),
        ({"data": {"type": "t_filter", "inputs": {"raw": "raw.txt", "extra": "raw.txt"}}},
         "stage 'data': unknown input 'extra'"),
        ({"data": {"type": "t_filter", "inputs": {"raw": "raw.txt"}, "confg": {}}}, "field 'stages.data.confg'"),
    ],
)  # fmt: skip
def test_bad_recipes_are_one_line_errors_with_exit_2(tmp_path, stages, expected):
    path = _bad_recipe(tmp_path, stages)
    code, out, err = run_cli("run", path, "--runs-dir", str(tmp_path / "runs"))
    assert code == 2, err
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_recipe_name_names_the_builtins(tmp_path):
    code, out, err = run_cli("run", "no-such-recipe")
    assert code == 2 and "quickstart" in err


def test_runner_records_fingerprint_beside_the_artifact(tmp_path):
    runs = tmp_path / "runs"
    path = write_recipe(tmp_path)
    run_recipe(path, runs_dir=runs, log=lambda m: None)
    stamp = json.loads((runs / "toy/.recipe/data.json").read_text())
    assert stamp["state"] == "done" and set(stamp["inputs"]) == {"raw"} and stamp["code"].startswith("0.")
    runner = Runner(load_recipe(path), runs)
    assert runner.output_of("pretrain") == runs / "toy/pretrain/final"


def test_changed_stage_code_reruns_that_stage_and_downstream(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    path = write_recipe(tmp_path)
    run_recipe(path, runs_dir=runs, log=lambda m: None)
    real = __import__("llmchain.recipe", fromlist=["code_version"]).code_version
    monkeypatch.setattr("llmchain.recipe.code_version",
                        lambda st: real(st) + ("-edited" if st.name == "t_vocab" else ""))  # fmt: skip
    _, plan = run_recipe(path, runs_dir=runs, dry_run=True, log=lambda m: None)
    assert ran(plan) == ["tokenizer", "pretrain"] and plan[1].reason == "code changed"


def test_input_paths_expand_environment_variables(tmp_path, monkeypatch):
    from llmchain.recipe_file import BUILTIN_DIR, expand_vars

    monkeypatch.setenv("TOY_DIR", str(tmp_path))
    monkeypatch.delenv("LLMCHAIN_RECIPES", raising=False)
    assert expand_vars("${TOY_DIR}/raw.txt") == f"{tmp_path}/raw.txt"
    assert expand_vars("${NOT_SET_ANYWHERE:-fallback}/x") == "fallback/x"
    assert expand_vars("${LLMCHAIN_RECIPES}/corpus") == f"{BUILTIN_DIR}/corpus"
    with pytest.raises(UserError, match="NOT_SET_ANYWHERE is not set"):
        expand_vars("${NOT_SET_ANYWHERE}/x")
    path = write_recipe(tmp_path)
    path.write_text(path.read_text().replace("raw: raw.txt", "raw: ${TOY_DIR}/raw.txt"))
    _, plan = run_recipe(path, runs_dir=tmp_path / "runs", log=lambda m: None)
    assert ran(plan) == ["data", "tokenizer", "pretrain"]


def test_budget_shares_become_max_time_and_set_budget_overrides(tmp_path):
    (tmp_path / "shards").mkdir()
    recipe = {"name": "b", "budget": "10m", "stages": {
        "pretrain": {"inputs": {"shards": "shards"}, "share": 0.5, "config": {"preset": "tiny"}},
        "again": {"type": "pretrain", "inputs": {"shards": "shards"}, "share": 0.5,
                  "config": {"preset": "tiny", "max_time": 7}},
    }}  # fmt: skip
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = load_recipe(path)
    assert r.budget == 600 and r.stage("pretrain").checked["max_time"] == 300
    assert r.stage("again").checked["max_time"] == 7  # a stage's own max_time wins over its share
    assert load_recipe(path, overrides=["budget=2m"]).stage("pretrain").checked["max_time"] == 60
    del recipe["budget"]
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "'share' needs a recipe 'budget'" in err
