"""What a recipe stage is, and the built-in ones: thin adapters from a stage to each stage's Python API.

Each adapter validates its config with the stage's own config class (the same fields as that
command's `--config` YAML), calls the stage's function — never a subprocess — into `ctx.out_dir`,
and returns a few numbers for the run summary. Imports of the stages happen inside the adapters, so
listing or checking a recipe stays fast. `BUILTIN_STAGES` at the end is the one list of them; this
module imports nothing of the recipe engine (recipe_file and recipe import it, not the reverse).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmchain.errors import ConfigError


@dataclass
class StageContext:
    """What a stage's `run` gets: where to write, its inputs (resolved paths) and its config."""

    name: str
    out_dir: Path
    inputs: dict[str, Path]
    config: dict[str, Any]
    run_dir: Path
    log: Callable[[str], None] = print


@dataclass
class StageType:
    """A kind of stage: its input roles and how to check and run it.

    `run(ctx)` writes the artifact into `ctx.out_dir` and returns a few numbers for the summary.
    `output` is the part of the stage dir that later stages take (e.g. "final" for pretraining).
    `check(config)` validates a config before anything runs (raise ConfigError/UserError) and returns
    it as the stage will use it, defaults filled in (`model_dump(mode="json")`): the recipe hashes
    that, so a changed default re-runs the stage. None: the config is hashed as written.
    The code hashed into the stage's fingerprint is found from these callables (llmchain.recipe_code).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any] | None]
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    output: str | Callable[[dict[str, Any]], str] = ""  # may depend on the config (e.g. the fine-tuning task)
    check: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    help: str = ""


_ENGINE = "the recipe sets it"  # placeholder for config fields the engine fills in (paths)


def _cfg(cls_name: str, config: dict[str, Any], **filled: Any):
    import llmchain.config as c

    return getattr(c, cls_name).model_validate({**config, **filled})


def _check(cls_name: str, **filled: Any):
    def check(config: dict[str, Any]) -> dict[str, Any]:
        for key in filled:
            if key in config:
                raise ConfigError(f"config field {key!r} is set by the recipe from the stage's inputs; remove it")
        return _cfg(cls_name, config, **filled).model_dump(mode="json")

    return check


# ----------------------------------------------------------------------------------------- data


def run_data(ctx: StageContext) -> dict[str, Any]:
    from llmchain.data.pipeline import Pipeline
    from llmchain.data.report import progress_bar

    cfg = _cfg("DataConfig", ctx.config)
    with progress_bar() as progress:
        stats = Pipeline.from_config(cfg).run(
            [str(ctx.inputs["raw"])], ctx.out_dir, workers=cfg.workers, executor=cfg.executor,
            ray_address=cfg.ray_address, strict=cfg.strict, shard_mb=cfg.shard_mb, config=cfg, progress=progress,
        )  # fmt: skip
    totals = stats.get("totals", stats)
    return {k: totals[k] for k in ("documents_in", "documents_out", "kept", "rejected") if k in totals}


def run_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from llmchain.tokenizer import train_tokenizer

    cfg = _cfg("TokenizerConfig", ctx.config)
    summary = train_tokenizer(ctx.inputs["documents"], cfg.vocab_size, ctx.out_dir, min_frequency=cfg.min_frequency,
                              max_documents=cfg.max_documents, model_max_length=cfg.model_max_length,
                              val_fraction=cfg.val_fraction, split_by=cfg.split_by, show_progress=True)  # fmt: skip
    return {"vocab": summary["vocab_size"], "documents": summary["documents"]}


def run_pack(ctx: StageContext) -> dict[str, Any]:
    from llmchain.data.pack import pack_documents

    cfg = _cfg("PackConfig", ctx.config)
    info = pack_documents(ctx.inputs["documents"], ctx.inputs["tokenizer"], ctx.out_dir, val_fraction=cfg.val_fraction,
                          split_by=cfg.split_by, workers=cfg.workers, shard_tokens=cfg.shard_tokens,
                          show_progress=True)  # fmt: skip
    splits = info.get("splits", info)
    return {f"{s} tokens": splits[s]["tokens"] for s in ("train", "val") if isinstance(splits.get(s), dict)}


def run_pairs(ctx: StageContext) -> dict[str, Any]:
    """A sequence task's source (+ line-aligned target) file → SFT, eval or corpus JSONL (data/pairs.py)."""
    from llmchain.data.pairs import write_pairs

    summary = write_pairs(ctx.inputs["source"], ctx.inputs.get("target"), ctx.out_dir, _cfg("PairsConfig", ctx.config))
    return {"rows": summary["rows"], "records": summary["records"]}


def _pairs_output(config: dict[str, Any]) -> str:
    from llmchain.data.pairs import OUTPUT_FILES

    return OUTPUT_FILES[config.get("format", "sft")]


def run_split(ctx: StageContext) -> dict[str, Any]:
    """A labelled table → train/val/test.jsonl (all three; the stage's output is the part it names)."""
    from llmchain.artifacts import write_manifest
    from llmchain.data.tables import split_labelled

    cfg = _cfg("SplitConfig", ctx.config)
    test = ctx.inputs.get("test")
    counts = split_labelled(ctx.inputs["data"], ctx.out_dir, test_fraction=cfg.test_fraction,
                            val_fraction=cfg.val_fraction, seed=cfg.seed, text_column=cfg.text_column,
                            label_column=cfg.label_column, group_column=cfg.group_column, header=cfg.header,
                            test_file=test)  # fmt: skip
    inputs = {"data": ctx.inputs["data"], **({"test": test} if test else {})}
    write_manifest(ctx.out_dir, "labelled-split", inputs=inputs, config=cfg, counts=counts)
    return counts


# ------------------------------------------------------------------------------------- training


def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    from llmchain.train.distributed import teardown_runtime
    from llmchain.train.pretrain import run_pretrain as _run

    filled = {"data": str(ctx.inputs["shards"]), "out": str(ctx.out_dir)}
    if "tokenizer" in ctx.inputs:
        filled["tokenizer"] = str(ctx.inputs["tokenizer"])
    if "model" in ctx.inputs:
        filled["init_from"] = str(ctx.inputs["model"])
    cfg = _cfg("PretrainConfig", {"resume": "auto", **ctx.config}, **filled)
    try:
        result = _run(cfg)
    finally:
        teardown_runtime()
    if result.final is None:
        raise KeyboardInterrupt  # stopped by a signal after a checkpoint: the next run resumes it
    ev = {f"val {k}": round(v, 4) for k, v in (result.fit.eval or {}).items() if k in ("loss", "bits_per_byte")}
    return {"params": f"{result.params / 1e6:.2f}M", "steps": result.fit.step, **ev}


def _check_pretrain(config: dict[str, Any]) -> dict[str, Any]:
    checked = _check("PretrainConfig", data=_ENGINE, out=_ENGINE)({"resume": "auto", **config})
    if not config.get("max_steps") and not config.get("max_time"):
        raise ConfigError("set max_steps or max_time in the config: the run needs an end")
    return checked


# ------------------------------------------------------------------------------------ fine-tuning


def _task(config: dict[str, Any], default: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    c = dict(config)
    task = c.pop("task", default)
    if task not in allowed:
        raise ConfigError(f"config field 'task': {task!r} is not one of {', '.join(allowed)}")
    return task, c


def _finetune_task(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    # resume auto, as pretraining: an interrupted fine-tuning that the recipe resumes continues from its
    # newest checkpoint (without it the loop refuses a run dir that has checkpoints)
    task, c = _task(config, "sft", ("sft", "classify"))
    return task, {"resume": "auto", **c}


def _finetune_filled(ctx_inputs: dict[str, Any], task: str) -> dict[str, Any]:
    filled = {k: str(v) for k, v in ctx_inputs.items()}
    if task == "sft":
        filled["data"] = filled.pop("train")
        if "val" in filled:
            filled["val_data"] = filled.pop("val")
        filled.pop("test", None)
    return filled


def run_finetune(ctx: StageContext) -> dict[str, Any]:
    """task classify → llmchain.train.classify (output RUN/best); task sft → llmchain.train.sft (RUN/final)."""
    task, c = _finetune_task(ctx.config)
    filled = {**_finetune_filled(ctx.inputs, task), "out": str(ctx.out_dir)}
    if task == "classify":
        from llmchain.train.classify import finetune_classifier
        from llmchain.train.distributed import teardown_runtime

        try:
            summary = finetune_classifier(_cfg("ClassifyConfig", c, **filled))
        finally:
            teardown_runtime()
        best = summary.get("best_val") or {}
        test = summary.get("test") or {}
        record = {"epochs": summary.get("epochs_run"), "val accuracy": _r(best.get("accuracy")),
                  "test accuracy": _r(test.get("accuracy"))}  # fmt: skip
        if "threshold" in summary:  # threshold: val
            record["threshold"] = summary["threshold"]["threshold"]
        return record
    from llmchain.train.distributed import teardown_runtime
    from llmchain.train.sft import finetune_sft

    try:
        result = finetune_sft(_cfg("SFTConfig", c, **filled))
    finally:
        teardown_runtime()
    if result.final is None:
        raise KeyboardInterrupt  # stopped by a signal after a checkpoint: the next run resumes it
    ev = {f"val {k}": _r(v) for k, v in (result.fit.eval or {}).items() if k in ("loss", "bits_per_byte")}
    return {"examples": result.counts.get("train_examples"), "steps": result.fit.step, **ev}


def _r(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def _check_finetune(config: dict[str, Any]) -> dict[str, Any]:
    task, c = _finetune_task(config)
    if task == "sft" and c.get("lora") and c.get("merge") is False:
        raise ConfigError("config field 'merge': a recipe's sft stage needs merge: true with lora (later stages "
                          "take the merged model in RUN/final)")  # fmt: skip
    placeholders = {"out": _ENGINE, "train": _ENGINE} if task == "classify" else {"out": _ENGINE, "data": _ENGINE}
    if "model" not in c:
        placeholders["model"] = _ENGINE
    checked = _check("ClassifyConfig" if task == "classify" else "SFTConfig", **placeholders)(c)
    return {"task": task, **checked}


def _finetune_output(config: dict[str, Any]) -> str:
    return "best" if config.get("task") == "classify" else "final"


# ------------------------------------------------------------------------------------ evaluation


def run_eval(ctx: StageContext) -> dict[str, Any]:
    """task lm (default): bits per byte beside n-gram baselines; classify; generate. Writes report.json."""
    task, c = _task(ctx.config, "lm", ("lm", "classify", "generate"))
    ins = {k: str(v) for k, v in ctx.inputs.items()}
    if task == "lm":
        from llmchain.eval.lm import run_lm_eval, summary_line

        cfg = _cfg("EvalLMConfig", c)
        report, _ = run_lm_eval(ctx.out_dir, data=ins["data"], model_dir=ins.get("model"), train_text=ins.get("train"),
                                orders=tuple(cfg.orders), batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                max_tokens=cfg.max_tokens, stride=cfg.stride, device=cfg.device)  # fmt: skip
        line = summary_line(report)
        if line:
            ctx.log(line)
        return {s["name"] + " bpb": round(s["bits_per_byte"], 4) for s in report["systems"]}
    if task == "classify":
        from llmchain.eval.classify import run_classify_eval

        if "train" not in ins:
            raise ConfigError(f"stage {ctx.name!r}: eval classify needs input 'train' (for its baselines)")
        cfg = _cfg("EvalClassifyConfig", c)
        report, _ = run_classify_eval(ctx.out_dir, train=ins["train"], test=ins["data"], model_dir=ins.get("model"),
                                      **cfg.model_dump())  # fmt: skip
        return {s["name"] + " accuracy": round(s["accuracy"], 4) for s in report["systems"]}
    from llmchain.eval.generate import run_generate_eval

    cfg = _cfg("EvalGenerateConfig", c)
    report, _ = run_generate_eval(ctx.out_dir, data=ins["data"], model_dir=ins.get("model"), train=ins.get("train"),
                                  **cfg.model_dump())  # fmt: skip
    return {s["name"]: s.get(report.get("primary", ""), "") for s in report.get("systems", [])}


def _check_eval(config: dict[str, Any]) -> dict[str, Any]:
    task, c = _task(config, "lm", ("lm", "classify", "generate"))
    cls = {"lm": "EvalLMConfig", "classify": "EvalClassifyConfig", "generate": "EvalGenerateConfig"}[task]
    return {"task": task, **_check(cls)(c)}


def run_report(ctx: StageContext) -> dict[str, Any]:
    """The model card (report.md/.html/.json + PNGs) of the model, with the given eval reports."""
    from llmchain.eval.report import build_card

    evals = [p for role, p in sorted(ctx.inputs.items()) if role.startswith("eval")]
    out, facts = build_card(ctx.inputs["model"], ctx.out_dir, config=_cfg("ReportConfig", ctx.config),
                            extra_evals=evals)  # fmt: skip
    return {"card": str(out / "report.md"), "evals": len(facts.get("evals") or [])}




def run_generate(ctx: StageContext) -> dict[str, Any]:
    """Sample continuations of a few prompts with a fixed seed: samples.jsonl + samples.md."""
    from llmchain.artifacts import atomic_dir, write_manifest
    from llmchain.infer.engine import load_engine
    from llmchain.infer.sampling import SamplingParams

    c = dict(ctx.config)
    prompts = c.get("prompts") or ["ROMEO:", "JULIET:\nO "]
    max_new, temperature = int(c.get("max_new_tokens", 128)), float(c.get("temperature", 0.8))
    top_k, seed = c.get("top_k", 50), int(c.get("seed", 0))
    model_dir = ctx.inputs["model"]
    engine = load_engine(model_dir)
    tok = engine.tokenizer
    ids = [tok.encode(prompt) for prompt in prompts]
    params = [SamplingParams(max_tokens=max_new, temperature=temperature, top_k=top_k or 0, seed=seed + i)
              for i in range(len(prompts))]  # fmt: skip
    rows = [{"prompt": prompt, "completion": c.text, "seed": seed + i, "temperature": temperature}
            for i, (prompt, (c,)) in enumerate(zip(prompts, engine.generate(ids, params), strict=True))]
    with atomic_dir(ctx.out_dir) as tmp:
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        md = [f"**{r['prompt'].strip()}** {r['completion']}\n" for r in rows]
        (tmp / "samples.md").write_text("\n---\n\n".join(md))
        write_manifest(tmp, "samples", inputs={"model": model_dir}, config=c, counts={"samples": len(rows)})
    return {"samples": len(rows)}


# ----------------------------------------------------------------------------------------- index


def run_index(ctx: StageContext) -> dict[str, Any]:
    """llmchain index: the documents → STAGE/index.sqlite (passages, vectors, keyword index), for
    `llmchain search` and `llmchain serve MODEL --index`."""
    from llmchain.rag.build import build_index

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    summary = build_index([str(ctx.inputs["docs"])], ctx.out_dir / "index.sqlite",
                          _cfg("IndexConfig", ctx.config), progress=False, log=ctx.log)
    return {"sources": summary.sources, "passages": summary.passages, "skipped": len(summary.skipped)}


# ---------------------------------------------------------------------------------------- export


def run_export(ctx: StageContext) -> dict[str, Any]:
    from llmchain.artifacts import atomic_dir, write_manifest
    from llmchain.model.export import export_gguf, export_hf

    c = dict(ctx.config)
    fmt, dtype = c.get("format", "gguf"), c.get("dtype")
    model_dir = ctx.inputs["model"]
    if fmt == "hf":
        summary = export_hf(model_dir, ctx.out_dir, dtype=dtype or "f32")
    else:
        with atomic_dir(ctx.out_dir) as tmp:
            summary = export_gguf(model_dir, tmp / f"model-{dtype or 'f16'}.gguf", dtype=dtype or "f16")
            write_manifest(tmp, "model-gguf", inputs={"model": model_dir}, config=c, counts=summary)
        summary["path"] = str(ctx.out_dir / Path(summary["path"]).name)
    return {"format": fmt, "dtype": summary["dtype"], "path": summary["path"]}


def _check_export(config: dict[str, Any]) -> None:
    from llmchain.model.export import GGUF_DTYPES, HF_DTYPES

    fmt, dtype = config.get("format", "gguf"), config.get("dtype")
    allowed = {"gguf": GGUF_DTYPES, "hf": tuple(HF_DTYPES)}
    if fmt not in allowed:
        raise ConfigError(f"config field 'format': {fmt!r} is not hf or gguf")
    if dtype is not None and dtype not in allowed[fmt]:
        raise ConfigError(f"config field 'dtype': {fmt} takes {', '.join(allowed[fmt])}, not {dtype!r}")
    if set(config) - {"format", "dtype"}:
        raise ConfigError(f"config field {sorted(set(config) - {'format', 'dtype'})[0]!r}: export takes format, dtype")


def _check_generate(config: dict[str, Any]) -> None:
    unknown = set(config) - {"prompts", "max_new_tokens", "temperature", "top_k", "seed"}
    if unknown:
        raise ConfigError(f"config field {sorted(unknown)[0]!r}: generate takes prompts, max_new_tokens, "
                          "temperature, top_k, seed")  # fmt: skip


# ---------------------------------------------------------------------------------------- privacy


def run_privacy_audit(ctx: StageContext) -> dict[str, Any]:
    from llmchain.privacy import run_privacy_audit_stage

    return run_privacy_audit_stage(ctx)


def _check_privacy_audit(config: dict[str, Any]) -> dict[str, Any]:
    from llmchain.privacy import check_stage_config

    return check_stage_config(config)


# Every built-in kind of stage, in chain order: the registry recipes name them from (recipe_file adds
# the ones a program registers with `register_stage`).
BUILTIN_STAGES: dict[str, StageType] = {st.name: st for st in (
    StageType("data", run_data, inputs=("raw",), check=_check("DataConfig"), help="raw text → documents"),
    StageType("split", run_split, inputs=("data",), optional=("test",), output=lambda c: f"{c.get('part', 'train')}.jsonl",
              check=_check("SplitConfig"), help="labelled table → train/val/test JSONL (stratified; output: `part`)"),
    StageType("tokenizer", run_tokenizer, inputs=("documents",), check=_check("TokenizerConfig"),
              help="documents → byte-level BPE tokenizer"),
    StageType("pack", run_pack, inputs=("documents", "tokenizer"), check=_check("PackConfig"),
              help="documents → token shards"),
    StageType("pairs", run_pairs, inputs=("source",), optional=("target",), output=_pairs_output,
              check=_check("PairsConfig"), help="task pairs → SFT / eval / corpus JSONL"),
    StageType("pretrain", run_pretrain, inputs=("shards",), optional=("tokenizer", "model"), output="final",
              check=_check_pretrain, help="token shards → base model (RUN/final)"),
    StageType("finetune", run_finetune, inputs=("train",), optional=("model", "val", "test"),
              output=_finetune_output, check=_check_finetune, help="model + data → fine-tuned model"),
    StageType("eval", run_eval, inputs=("data",), optional=("model", "train"), check=_check_eval,
              help="model (+ baselines) on data → report.json"),
    StageType("report", run_report, inputs=("model",), optional=("eval", "eval2", "eval3"),
              check=_check("ReportConfig"), help="model → model card"),
    StageType("generate", run_generate, inputs=("model",), check=_check_generate,
              help="model → sample generations (samples.md)"),
    StageType("export", run_export, inputs=("model",), check=_check_export,
              help="model → GGUF file or clean HF dir"),
    StageType("privacy_audit", run_privacy_audit, inputs=("model", "documents"), optional=("shards",),
              check=_check_privacy_audit, help="model + documents with canaries → privacy report"),
    StageType("index", run_index, inputs=("docs",), output="index.sqlite", check=_check("IndexConfig"),
              help="documents → a retrieval index (llmchain index)"),
)}  # fmt: skip
