"""The built-in kinds of recipe stage: thin adapters from a recipe stage to each stage's Python API.

Each adapter validates its config with the stage's own config class (the same fields as that
command's `--config` YAML), calls the stage's function — never a subprocess — into `ctx.out_dir`,
and returns a few numbers for the run summary. Imports of the stages happen inside the adapters, so
listing or checking a recipe stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmchain.errors import ConfigError
from llmchain.recipe import StageContext, StageType, register_stage

_ENGINE = "the recipe sets it"  # placeholder for config fields the engine fills in (paths)


def _cfg(cls_name: str, config: dict[str, Any], **filled: Any):
    import llmchain.config as c

    return getattr(c, cls_name).model_validate({**config, **filled})


def _check(cls_name: str, **filled: Any):
    def check(config: dict[str, Any]) -> None:
        for key in filled:
            if key in config:
                raise ConfigError(f"config field {key!r} is set by the recipe from the stage's inputs; remove it")
        _cfg(cls_name, config, **filled)

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
                              show_progress=True)  # fmt: skip
    return {"vocab": summary["vocab_size"], "documents": summary["documents"]}


def run_pack(ctx: StageContext) -> dict[str, Any]:
    from llmchain.data.pack import pack_documents

    cfg = _cfg("PackConfig", ctx.config)
    info = pack_documents(ctx.inputs["documents"], ctx.inputs["tokenizer"], ctx.out_dir, val_fraction=cfg.val_fraction,
                          split_by=cfg.split_by, workers=cfg.workers, shard_tokens=cfg.shard_tokens,
                          show_progress=True)  # fmt: skip
    splits = info.get("splits", info)
    return {f"{s} tokens": splits[s]["tokens"] for s in ("train", "val") if isinstance(splits.get(s), dict)}


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
    if not cfg.max_steps and not cfg.max_time:
        raise ConfigError(f"stage {ctx.name!r}: set max_steps or max_time: the run needs an end")
    try:
        result = _run(cfg)
    finally:
        teardown_runtime()
    if result.final is None:
        raise KeyboardInterrupt  # stopped by a signal after a checkpoint: the next run resumes it
    ev = {f"val {k}": round(v, 4) for k, v in (result.fit.eval or {}).items() if k in ("loss", "bits_per_byte")}
    return {"params": f"{result.params / 1e6:.2f}M", "steps": result.fit.step, **ev}


# ------------------------------------------------------------------------------------ evaluation


def run_generate(ctx: StageContext) -> dict[str, Any]:
    """Sample continuations of a few prompts with a fixed seed: samples.jsonl + samples.md."""
    import torch

    from llmchain.artifacts import atomic_dir, write_manifest
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    c = dict(ctx.config)
    prompts = c.get("prompts") or ["ROMEO:", "JULIET:\nO "]
    max_new, temperature = int(c.get("max_new_tokens", 128)), float(c.get("temperature", 0.8))
    top_k, seed = c.get("top_k", 50), int(c.get("seed", 0))
    model_dir = ctx.inputs["model"]
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    rows = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed + i)
        ids = torch.tensor([tok.encode(prompt)])
        room = model.config.max_position_embeddings - ids.shape[1]
        out = model.generate(ids, min(max_new, room), temperature=temperature, top_k=top_k,
                             eos_token_id=model.config.eos_token_id, generator=gen)  # fmt: skip
        text = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        rows.append({"prompt": prompt, "completion": text, "seed": seed + i, "temperature": temperature})
    with atomic_dir(ctx.out_dir) as tmp:
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        md = [f"**{r['prompt'].strip()}** {r['completion']}\n" for r in rows]
        (tmp / "samples.md").write_text("\n---\n\n".join(md))
        write_manifest(tmp, "samples", inputs={"model": model_dir}, config=c, counts={"samples": len(rows)})
    return {"samples": len(rows)}


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


_MODEL = ("llmchain.model.llama", "llmchain.model.io")
register_stage(StageType("data", run_data, inputs=("raw",), check=_check("DataConfig"),
                         code=("llmchain.data",), help="raw text → documents (llmchain data prepare)"))
register_stage(StageType("tokenizer", run_tokenizer, inputs=("documents",), check=_check("TokenizerConfig"),
                         code=("llmchain.tokenizer",), help="documents → byte-level BPE tokenizer"))
register_stage(StageType("pack", run_pack, inputs=("documents", "tokenizer"), check=_check("PackConfig"),
                         code=("llmchain.data.pack", "llmchain.tokenizer"), help="documents → token shards"))
register_stage(StageType("pretrain", run_pretrain, inputs=("shards",), optional=("tokenizer", "model"), output="final",
                         check=_check("PretrainConfig", data=_ENGINE, out=_ENGINE),
                         code=("llmchain.train", *_MODEL), help="token shards → base model (RUN/final)"))
register_stage(StageType("generate", run_generate, inputs=("model",), check=_check_generate,
                         code=_MODEL, help="model → sample generations (samples.md)"))
register_stage(StageType("export", run_export, inputs=("model",), check=_check_export,
                         code=("llmchain.model.export", *_MODEL), help="model → GGUF file or clean HF dir"))
