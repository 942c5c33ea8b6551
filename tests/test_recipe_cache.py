"""The recipe cache cannot lie: a stage's code is what it really imports, its config hash sees defaults,
an unreadable record never costs the output, an interrupted pretraining (or fine-tuning) resumes unless
its own config, inputs or code changed, names that become paths are checked, and the built-in stages
are one explicit registry.

Edits to the code happen in a copy of the package (`pkg_copy`), never in the tree the other tests run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from conftest import run_cli
from llmchain import recipe_code
from llmchain.config import read_yaml
from llmchain.recipe import (
    Runner,
    StageType,
    builtin_recipes,
    code_version,
    parse_recipe,
    register_stage,
    run_recipe,
)
from llmchain.recipe_stages import BUILTIN_STAGES

SRC = Path(__file__).resolve().parents[1] / "src"
CORPUS = SRC / "llmchain/recipes/corpus/tinyshakespeare.txt"


def quiet(_: str) -> None:
    pass


@pytest.fixture
def pkg_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the llmchain sources that fingerprints are computed from (safe to edit)."""
    dst = tmp_path / "pkg" / "llmchain"
    shutil.copytree(SRC / "llmchain", dst, ignore=shutil.ignore_patterns("__pycache__", "corpus"))
    monkeypatch.setattr(recipe_code, "PACKAGE_DIR", dst)
    return dst


def _files(stage: StageType) -> set[str]:
    code = recipe_code.stage_code([stage.run, stage.check])
    return {f.relative_to(recipe_code.PACKAGE_DIR).as_posix() for f in code.files()}


# ------------------------------------------------------------------------------ code fingerprint


def _model_kernels() -> set[str]:
    """The llmchain modules model/llama.py imports at the top (its training kernels), read with a regex:
    a check of the ast walk that does not use it, and that survives a renamed kernels module."""
    text = (recipe_code.PACKAGE_DIR / "model/llama.py").read_text(encoding="utf-8")
    deps = {m.replace(".", "/") + ".py" for m in re.findall(r"^from llmchain\.([\w.]+) import", text, re.M)}
    return {d for d in deps if (recipe_code.PACKAGE_DIR / d).is_file()}


def _largest_module_outside(files: set[str]) -> str:
    """A substantial module the stage does not import (serving code, today)."""
    outside = [p for p in recipe_code.PACKAGE_DIR.rglob("*.py")
               if p.relative_to(recipe_code.PACKAGE_DIR).as_posix() not in files]  # fmt: skip
    return max(outside, key=lambda p: p.stat().st_size).relative_to(recipe_code.PACKAGE_DIR).as_posix()


def test_pretrain_code_is_every_module_it_imports_and_nothing_else():
    files = _files(BUILTIN_STAGES["pretrain"])
    # the modules the old hand-written list missed (the model's kernels, the EMA, the config classes),
    # and the module that defines the stage
    assert _model_kernels() and _model_kernels() <= files
    assert {"train/ema.py", "config.py", "recipe_stages.py"} <= files
    assert {"train/pretrain.py", "train/loop.py", "train/checkpoint.py", "model/llama.py"} <= files
    # not imported by pretraining: serving, fine-tuning, the model card, the recipe engine itself
    assert not {"serve/api.py", "train/sft.py", "eval/report.py", "recipe.py", "recipe_file.py"} & files
    assert (recipe_code.PACKAGE_DIR / "serve/api.py").is_file()  # (the line above is not vacuous)
    # package data that imported code reads is covered too (the C kernels of the inference engine)
    c_file = next(recipe_code.PACKAGE_DIR.rglob("kernels.c"))
    user = next(p for p in c_file.parent.glob("*.py") if c_file.name in recipe_code.summary(p)["strings"])
    module = ".".join(("llmchain", *user.relative_to(recipe_code.PACKAGE_DIR).with_suffix("").parts))
    code = recipe_code.StageCode({}, recipe_code.module_closure([module]), [])
    assert c_file in code.files()


def _append(path: Path, text: str) -> str:
    old = path.read_text(encoding="utf-8")
    path.write_text(old + text, encoding="utf-8")
    return old


def test_only_edits_to_code_a_stage_runs_change_its_fingerprint(pkg_copy):
    pretrain, generate = BUILTIN_STAGES["pretrain"], BUILTIN_STAGES["generate"]
    before = code_version(pretrain), code_version(generate)
    # a module neither imports, and a comment or reflowed docstring in one pretraining imports
    unrelated = _largest_module_outside(_files(pretrain) | _files(generate))
    _append(pkg_copy / unrelated, "\n\ndef added_elsewhere():\n    return 1\n")
    ema = pkg_copy / "train/ema.py"
    ema.write_text(ema.read_text().replace('"""', '"""\n', 1) + "\n# a comment that changes nothing\n")
    assert (code_version(pretrain), code_version(generate)) == before
    # another stage's adapter in the same file: that stage only
    stages = pkg_copy / "recipe_stages.py"
    text = stages.read_text()
    assert text.count('int(c.get("max_new_tokens", 128))') == 1
    stages.write_text(text.replace('int(c.get("max_new_tokens", 128))', 'int(c.get("max_new_tokens", 64))'))
    assert code_version(pretrain) == before[0] and code_version(generate) != before[1]
    # real edits to modules pretraining imports, lazily or deep down: each changes it, undoing restores it
    for rel in ("train/ema.py", *_model_kernels(), "config.py", "train/pretrain.py", "artifacts.py"):
        old = _append(pkg_copy / rel, "\n_PROBE = 1\n")
        assert code_version(pretrain) != before[0], rel
        (pkg_copy / rel).write_text(old)
        assert code_version(pretrain) == before[0], rel


def test_a_saved_code_index_spares_the_parsing_and_still_sees_edits(pkg_copy, tmp_path, monkeypatch):
    pretrain = BUILTIN_STAGES["pretrain"]
    before = code_version(pretrain)
    recipe_code.save_index(tmp_path / "index.json")
    monkeypatch.setattr(recipe_code, "_INDEX", {})  # a new process: nothing known but the saved index
    monkeypatch.setattr(recipe_code, "_TREES", {})
    (tmp_path / "bad.json").write_text('{"version": 1, "files": [')
    recipe_code.load_index(tmp_path / "bad.json")  # an unreadable index is ignored
    recipe_code.load_index(tmp_path / "index.json")
    parsed: list[str] = []
    real_parse = recipe_code.parse
    monkeypatch.setattr(recipe_code, "parse", lambda path: parsed.append(path.name) or real_parse(path))
    assert code_version(pretrain) == before and set(parsed) == {"recipe_stages.py"}  # the entry's tree only
    _append(pkg_copy / "train/ema.py", "\n_PROBE = 1\n")
    assert code_version(pretrain) != before and "ema.py" in parsed


# ---------------------------------------------------------------------------------- config hash


def _pretrain_recipe(tmp_path: Path, config: dict) -> dict:
    return {"name": "d", "stages": {"pretrain": {"inputs": {"shards": str(tmp_path)}, "config": config}}}


def test_a_changed_default_changes_the_config_hash(tmp_path, monkeypatch):
    import llmchain.config as c

    def config_hash(config: dict) -> str:
        recipe = parse_recipe(_pretrain_recipe(tmp_path, config), source="d.yaml", base_dir=tmp_path)
        return Runner(recipe, tmp_path / "runs").fingerprint(recipe.stage("pretrain"))["config"]

    written = {"preset": "nano", "max_steps": 5}
    before = config_hash(written)
    default_lr = c.PretrainConfig.model_fields["lr"].default
    assert config_hash({**written, "lr": default_lr}) == before  # the values are hashed, not the text

    class NewDefault(c.PretrainConfig):
        lr: float = Field(2e-3, gt=0)

    monkeypatch.setattr(c, "PretrainConfig", NewDefault)
    assert config_hash(written) != before
    assert config_hash({**written, "lr": 2e-3}) == config_hash(written)


class CountConfig(BaseModel):
    start: int = 0


CONFIGS = {"count": CountConfig}  # looked up at check time, so a test can swap in another default


def _check_count(config: dict) -> dict:
    return CONFIGS["count"].model_validate(config).model_dump(mode="json")


def _count(ctx):
    cfg = CONFIGS["count"].model_validate(ctx.config)
    ctx.out_dir.mkdir(parents=True)
    (ctx.out_dir / "n.txt").write_text(str(cfg.start))


register_stage(StageType("t_cache_count", _count, check=_check_count))


def test_a_changed_default_reruns_the_stage(tmp_path, monkeypatch):
    path = tmp_path / "count.yaml"
    path.write_text(yaml.safe_dump({"name": "count", "stages": {"count": {"type": "t_cache_count"}}}))
    runs = tmp_path / "runs"
    run_recipe(path, runs_dir=runs, log=quiet)
    _, plan = run_recipe(path, runs_dir=runs, log=quiet)
    assert [s.reason for s in plan] == ["up to date"]

    class NewDefault(CountConfig):
        start: int = 7

    monkeypatch.setitem(CONFIGS, "count", NewDefault)
    _, plan = run_recipe(path, runs_dir=runs, log=quiet)
    assert [(s.run, s.reason) for s in plan] == [(True, "config changed")]
    assert (runs / "count/count/n.txt").read_text() == "7"


# ------------------------------------------------------------------------------ unreadable stamp

SEEN: list[tuple[Path, str | None]] = []  # (where the stage wrote, what its output dir held meanwhile)


def _write(ctx):
    final = ctx.run_dir / ctx.name / "value.txt"
    SEEN.append((ctx.out_dir, final.read_text() if final.is_file() else None))
    ctx.out_dir.mkdir(parents=True)
    (ctx.out_dir / "value.txt").write_text(str(ctx.config["value"]))
    if ctx.config.get("fail"):
        raise RuntimeError("killed halfway")


register_stage(StageType("t_cache_write", _write))


def _write_recipe(tmp_path: Path, **config) -> Path:
    path = tmp_path / "w.yaml"
    stages = {"make": {"type": "t_cache_write", "config": config}}
    path.write_text(yaml.safe_dump({"name": "w", "stages": stages}))
    return path


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", ""])
def test_an_unreadable_stamp_never_deletes_the_output(tmp_path, garbage):
    runs, SEEN[:] = tmp_path / "runs", []
    run_recipe(_write_recipe(tmp_path, value=1), runs_dir=runs, log=quiet)
    out, stamp = runs / "w/make", runs / "w/.recipe/make.json"
    assert SEEN == [(out, None)] and (out / "value.txt").read_text() == "1"
    stamp.write_text(garbage)
    _, plan = run_recipe(_write_recipe(tmp_path, value=1), runs_dir=runs, dry_run=True, log=quiet)
    assert plan[0].run and "unreadable" in plan[0].reason
    # a re-run that fails: the old output is still there, untouched
    stamp.write_text(garbage)
    with pytest.raises(RuntimeError, match="killed halfway"):
        run_recipe(_write_recipe(tmp_path, value=2, fail=True), runs_dir=runs, log=quiet)
    assert (out / "value.txt").read_text() == "1"
    # one that succeeds wrote beside the old output (still readable meanwhile), then took its place
    stamp.write_text(garbage)
    log: list[str] = []
    run_recipe(_write_recipe(tmp_path, value=3), runs_dir=runs, log=log.append)
    assert SEEN[-1] == (runs / "w/.recipe/work/make", "1") and (out / "value.txt").read_text() == "3"
    assert any("unreadable" in line and "stays until" in line for line in log), log
    assert json.loads(stamp.read_text())["state"] == "done" and not (runs / "w/.recipe/work/make").exists()
    _, plan = run_recipe(_write_recipe(tmp_path, value=3), runs_dir=runs, log=quiet)
    assert [s.reason for s in plan] == ["up to date"]


def test_a_swap_never_touches_another_stages_work_dir(tmp_path):
    # "a" swaps its re-run in by way of a dir that must not be "a.old"'s interrupted work dir
    def recipe(fail: bool) -> Path:
        path = tmp_path / "two.yaml"
        stages = {"a": {"type": "t_cache_write", "config": {"value": 1}},
                  "a.old": {"type": "t_cache_write", "config": {"value": 2, "fail": fail}}}  # fmt: skip
        path.write_text(yaml.safe_dump({"name": "two", "stages": stages}))
        return path

    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError):
        run_recipe(recipe(fail=True), runs_dir=runs, log=quiet)  # "a.old" fails in its own (new) dir
    run_recipe(recipe(fail=False), runs_dir=runs, log=quiet)
    with pytest.raises(RuntimeError):
        run_recipe(recipe(fail=True), runs_dir=runs, log=quiet)  # now it fails in its work dir
    partial = runs / "two/.recipe/work/a.old/value.txt"
    assert partial.read_text() == "2"
    run_recipe(recipe(fail=True), runs_dir=runs, only="a", log=quiet)
    assert partial.read_text() == "2" and (runs / "two/a/value.txt").read_text() == "1"


# ------------------------------------------------------------------------- interrupted pretraining


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Tokenizer (BPE 320) + shards of the first 40k characters of the bundled Shakespeare."""
    from llmchain.data.pack import pack_documents
    from llmchain.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("cache-shards")
    (root / "input.txt").write_text(CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    train_tokenizer(root / "input.txt", 320, root / "tok")
    pack_documents(root / "input.txt", root / "tok", root / "shards", val_fraction=0.1, split_by="chars",
                   workers=1)  # fmt: skip
    return root / "shards"


def _pretrain_yaml(tmp_path: Path, shards: Path, lr: float) -> Path:
    config = {"preset": "nano", "seq_len": 32, "batch_size": 4, "max_steps": 8, "warmup_steps": 2, "lr": lr,
              "eval_every": 0, "save_every": 2, "log_every": 1, "threads": 1,
              "precision": "fp32"}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "stages": {"pretrain": {"inputs": {"shards": str(shards)},
                                                                         "config": config}}}))  # fmt: skip
    return path


@pytest.fixture
def batches(monkeypatch) -> dict:
    """Records the steps pretraining asks batches for; SIGTERMs itself at step `stop_at` (as `kill` would)."""
    import llmchain.train.pretrain as pretrain

    get, state = pretrain.TokenShards.get_batch, {"steps": [], "stop_at": None}

    def recording(self, step, rank, world_size):
        state["steps"].append(step)
        if step == state["stop_at"]:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes the step, checkpoints and stops
        return get(self, step, rank, world_size)

    monkeypatch.setattr(pretrain.TokenShards, "get_batch", recording)
    return state


def _run(path: Path, runs: Path, batches: dict, stop_at: int | None = None) -> list[str]:
    log: list[str] = []
    batches.update(steps=[], stop_at=stop_at)
    if stop_at is None:
        run_recipe(path, runs_dir=runs, log=log.append)
    else:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(path, runs_dir=runs, log=log.append)
    return log


@pytest.mark.timeout(180)
def test_interrupted_pretrain_resumes_unless_its_config_changed(tmp_path, shards, pkg_copy, batches):
    runs, out = tmp_path / "runs", tmp_path / "runs/p/pretrain"
    _run(_pretrain_yaml(tmp_path, shards, lr=3e-3), runs, batches, stop_at=3)
    assert (out / "checkpoints").is_dir() and not (out / "final").exists()
    first = min(batches["steps"])
    # code pretraining does not import changed: the run continues from its checkpoint
    unrelated = _largest_module_outside(_files(BUILTIN_STAGES["pretrain"]))
    _append(pkg_copy / unrelated, "\n\ndef added_elsewhere():\n    return 1\n")
    log = _run(_pretrain_yaml(tmp_path, shards, lr=3e-3), runs, batches)
    assert any("interrupted run (resuming)" in line for line in log), log
    assert any("resuming the interrupted run in" in line for line in log), log
    assert min(batches["steps"]) == first + 4 and (out / "final/model.safetensors").is_file()
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    assert [r["step"] for r in records if r.get("split", "train") == "train"] == list(range(1, 9))  # one run
    model = (out / "final/model.safetensors").read_bytes()

    # a new config interrupted while re-running: the finished model stays where it was
    _run(_pretrain_yaml(tmp_path, shards, lr=2e-3), runs, batches, stop_at=3)
    assert (out / "final/model.safetensors").read_bytes() == model
    assert (runs / "p/.recipe/work/pretrain/checkpoints").is_dir()
    # and another config change: the interrupted run is not resumed but started over, and says so
    log = _run(_pretrain_yaml(tmp_path, shards, lr=1e-3), runs, batches)
    assert any("starting over, config changed since the interrupted run" in line for line in log), log
    assert min(batches["steps"]) == first and (out / "final/model.safetensors").read_bytes() != model
    assert not (runs / "p/.recipe/work/pretrain").exists()


# ------------------------------------------------------------------------------- names that are paths


def _named_recipe(tmp_path: Path, name: str, stage: str) -> str:
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": {stage: {"type": "t_cache_count"}}}))
    return str(path)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "/tmp/abs", "..", ".hidden", "a..b", "x\ny"])
@pytest.mark.parametrize("where", ["recipe", "stage"])
def test_recipe_and_stage_names_that_are_not_one_plain_directory_are_one_line_errors(tmp_path, bad, where):
    path = _named_recipe(tmp_path, bad if where == "recipe" else "ok", bad if where == "stage" else "ok")
    runs = tmp_path / "deep/runs"
    code, out, err = run_cli("run", path, "--runs-dir", str(runs))
    field = "field 'name'" if where == "recipe" else "field 'stages': stage name"
    assert code == 2 and err.startswith(f"error: {path}: {field}: {bad!r} is not a valid name"), err
    assert err.count("\n") == 1 and not runs.exists() and not (tmp_path / "x").exists()


def test_plain_names_with_dots_and_dashes_are_fine(tmp_path):
    runner, plan = run_recipe(_named_recipe(tmp_path, "gpt-0.5_v2", "count.v1"), runs_dir=tmp_path, log=quiet)
    assert [s.run for s in plan] == [True] and (tmp_path / "gpt-0.5_v2/count.v1/n.txt").is_file()


# ------------------------------------------------------------------------------ the stage registry


def test_builtin_stages_are_one_registry_without_an_import_cycle():
    # recipe_stages imports nothing of the engine, statically (lazy imports included)...
    imported = recipe_code.module_closure(["llmchain.recipe_stages"])
    assert not {"llmchain.recipe", "llmchain.recipe_file"} & imported
    # ...so recipe_file imports alone, registers every built-in, and does not pull in the runner
    probe = ("import sys, llmchain.recipe_file as f; "
             "print(' '.join(f.stage_types()), 'llmchain.recipe' in sys.modules)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    *names, runner_loaded = done.stdout.split()
    assert names[: len(BUILTIN_STAGES)] == list(BUILTIN_STAGES) and runner_loaded == "False"
    # every kind of stage the built-in recipes name is registered
    used = {spec.get("type") or name for p in builtin_recipes().values()
            for name, spec in read_yaml(p)["stages"].items()}  # fmt: skip
    assert used and used <= set(BUILTIN_STAGES)
    assert set(BUILTIN_STAGES) == {"data", "tokenizer", "pack", "pairs", "split", "pretrain", "finetune", "eval",
                                   "report", "generate", "export", "privacy_audit", "index"}  # fmt: skip


@pytest.fixture
def interrupt_at(monkeypatch) -> dict:
    """SIGTERM at optimizer step `step` of any training loop (pretraining, fine-tuning) while set."""
    import llmchain.train.loop as loop

    record, state = loop._train_record, {"step": None}

    def recording(config, step, *args, **kwargs):
        if step == state["step"]:
            os.kill(os.getpid(), signal.SIGTERM)
        return record(config, step, *args, **kwargs)

    monkeypatch.setattr(loop, "_train_record", recording)
    return state


@pytest.mark.timeout(180)
def test_interrupted_finetune_resumes_from_its_checkpoint(tmp_path, shards, interrupt_at):
    import torch

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    base = Llama(LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                             tie_word_embeddings=True, eos_token_id=0, bos_token_id=0,
                             pad_token_id=1))  # fmt: skip
    save_model(base, tmp_path / "base", tokenizer_dir=shards.parent / "tok")
    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
            for i in range(24)]  # fmt: skip
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"task": "sft", "max_steps": 6, "batch_size": 2, "seq_len": 64, "save_every": 2, "log_every": 1,
              "warmup_steps": 1, "eval_every": 0, "threads": 1, "precision": "fp32"}  # fmt: skip
    path = tmp_path / "ft.yaml"
    inputs = {"model": str(tmp_path / "base"), "train": str(tmp_path / "sft.jsonl")}
    stages = {"finetune": {"inputs": inputs, "config": config}}
    path.write_text(yaml.safe_dump({"name": "ft", "stages": stages}))
    runs, out = tmp_path / "runs", tmp_path / "runs/ft/finetune"
    interrupt_at["step"] = 3
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, runs_dir=runs, log=quiet)
    assert (out / "checkpoints").is_dir() and not (out / "final").exists()
    interrupt_at["step"] = None
    log: list[str] = []
    run_recipe(path, runs_dir=runs, log=log.append)
    assert any("resuming the interrupted run in" in line for line in log), log
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split", "train") == "train"] == list(range(1, 7))
    assert (out / "final/model.safetensors").is_file()
