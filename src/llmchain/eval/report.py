"""`llmchain report RUN_OR_MODEL_DIR`: a model card (report.md + report.html + PNGs + report.json).

Built only from what the chain recorded (see chain.py): data sources and what every filter removed,
PII redactions, dedup rate, the tokenizer, token counts, the model's shape and size, how it was
trained (steps, tokens, time, hardware, loss curves), every `llmchain eval` report about it with its
baselines, sample generations and the intended use and limitations. A fact that was not recorded is
written as "not recorded" — never estimated or invented.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_dir, atomic_write_json, atomic_write_text, read_manifest, write_manifest
from llmchain.eval import cardtext
from llmchain.eval.chain import Chain, find_eval_reports, trace

MISSING = "not recorded"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metrics(run: Path | None) -> list[dict[str, Any]]:
    if run is None or not (run / "metrics.jsonl").is_file():
        return []
    rows = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run: the rest still tells the story
        if isinstance(r, dict) and "step" in r:
            rows.append(r)
    return rows


def data_facts(chain: Chain) -> dict[str, Any]:
    """Sources, counts, per-step removals, PII redactions and dedup rate of the documents dir."""
    shards_inputs = (chain.manifest("shards") or {}).get("inputs") or {}
    packed_from = (shards_inputs.get("documents") or {}).get("path")
    if chain.documents is None:
        return {"found": False, "packed_from": packed_from}
    stats = _json(chain.documents / "stats.json") or {}
    man = read_manifest(chain.documents) or {}
    sources = [{"path": v.get("path"), "sha256": v.get("sha256")} for v in (man.get("inputs") or {}).values()
               if isinstance(v, dict)]  # fmt: skip
    steps = stats.get("steps") or []
    pii: dict[str, int] = {}
    dedup_removed = dedup_in = 0
    for s in steps:
        if "pii" in s.get("name", ""):
            for k, v in (s.get("counters") or {}).items():
                pii[k] = pii.get(k, 0) + int(v)
        if "dedup" in s.get("name", "") or "dup" in " ".join(s.get("removed", {})):
            dedup_removed += sum(s.get("removed", {}).values())
            dedup_in = dedup_in or s.get("in", 0)
    return {
        "found": True,
        "path": str(chain.documents),
        "sources": sources,
        "stats": stats,
        "steps": steps,
        "pii": pii,
        "dedup_removed": dedup_removed,
        "dedup_rate": dedup_removed / dedup_in if dedup_in else None,
        "has_stats": bool(stats),
    }


def tokenizer_facts(chain: Chain) -> dict[str, Any]:
    tdir = chain.tokenizer or (chain.model if chain.model and (chain.model / "tokenizer.json").is_file() else None)
    if tdir is None:
        return {"found": False}
    tj = _json(tdir / "tokenizer.json") or {}
    cfg = _json(tdir / "tokenizer_config.json") or {}
    model = tj.get("model") or {}
    vocab = len(model.get("vocab") or {}) + len([t for t in tj.get("added_tokens") or []
                                                 if t.get("content") not in (model.get("vocab") or {})])  # fmt: skip
    man = read_manifest(tdir) or {}
    return {
        "found": True,
        "path": str(tdir),
        "type": model.get("type", MISSING),
        "byte_level": "ByteLevel" in json.dumps(tj.get("pre_tokenizer") or {}),
        "vocab_size": vocab,
        "special": [t.get("content") for t in tj.get("added_tokens") or [] if t.get("special")],
        "chat_template": bool(cfg.get("chat_template") or (tdir / "chat_template.jinja").is_file()),
        "trained_on": {k: v for k, v in (man.get("counts") or {}).items()},
        "inputs": [v.get("path") for v in (man.get("inputs") or {}).values() if isinstance(v, dict)],
        "separate_dir": chain.tokenizer is not None,
    }


def model_facts(chain: Chain) -> dict[str, Any]:
    if chain.model is None:
        return {"found": False}
    cfg = _json(chain.model / "config.json") or {}
    man = read_manifest(chain.model) or {}
    params = (man.get("counts") or {}).get("parameters")
    if params is None:
        from llmchain.model.io import read_config

        params = read_config(chain.model).num_params()
    size = sum(p.stat().st_size for p in chain.model.glob("model*.safetensors"))
    keys = ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "vocab_size", "tie_word_embeddings", "torch_dtype",
            "rope_theta")  # fmt: skip
    return {"found": True, "path": str(chain.model), "params": params, "bytes": size,
            "config": {k: cfg.get(k) for k in keys if k in cfg}, "manifest": man}  # fmt: skip


def training_facts(chain: Chain) -> dict[str, Any]:
    rows = _metrics(chain.run)
    man = (read_manifest(chain.model) if chain.model else None) or {}
    cfg = man.get("config") if isinstance(man.get("config"), dict) else None
    if cfg is None and chain.run is not None and (chain.run / "config.yaml").is_file():
        import yaml

        try:
            cfg = yaml.safe_load((chain.run / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError:
            cfg = None
    train = [r for r in rows if r.get("split", "train") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    last = train[-1] if train else {}
    counts = man.get("counts") or {}
    hardware = {k: v for r in rows[-3:] for k, v in r.items() if k in ("device", "gpu", "hardware", "world_size")}
    hardware.update({k: v for k, v in man.items() if k in ("device", "hardware", "gpu")})
    if isinstance(hardware.get("hardware"), dict):  # pretrain's manifest: {"hardware": {"cpu": ..., ...}}
        hardware.update(hardware.pop("hardware"))
    return {
        "run": str(chain.run) if chain.run else None,
        "config": cfg or {},
        "steps": counts.get("steps", last.get("step")),
        "tokens": counts.get("tokens", last.get("tokens")),
        "elapsed_s": last.get("elapsed_s"),
        "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"),
        "final_train_loss": last.get("loss"),
        "final_val": {k: v for k, v in (val[-1] if val else man.get("eval") or {}).items()
                      if k not in ("step", "split")},  # fmt: skip
        "hardware": hardware,
        "platform": (man.get("versions") or {}).get("platform"),
        "torch": (man.get("versions") or {}).get("torch"),
        "records": rows,
    }


def shard_facts(chain: Chain) -> dict[str, Any]:
    if chain.shards is None:
        return {"found": False}
    info = _json(chain.shards / "shards.json") or {}
    return {"found": True, "path": str(chain.shards), "info": info}


def sample_generations(chain: Chain, config: Any) -> dict[str, Any]:
    """A few continuations from the model (seeded), or the reason there are none."""
    if chain.model is None or config.samples == 0:
        return {"samples": [], "reason": "no model" if chain.model is None else "turned off (--samples 0)"}
    try:
        from llmchain.infer.engine import load_engine
        from llmchain.infer.sampling import SamplingParams

        engine = load_engine(chain.model)
    except Exception as e:  # a card must still be written when the model cannot run here
        return {"samples": [], "reason": f"could not load the model: {str(e).splitlines()[0]}"}
    tok = engine.tokenizer
    prompts = list(config.prompts) or cardtext.default_prompts(chain, config.samples)
    chat = bool(chain.base_models) and bool(getattr(tok, "chat_template", None))
    ctx = engine.max_model_len
    batch = []
    prompts = prompts[: config.samples] if not config.prompts else prompts
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) \
            if chat else p  # fmt: skip
        ids = tok(text, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        batch.append(ids[-(ctx - config.sample_tokens):])
    params = SamplingParams(max_tokens=config.sample_tokens, temperature=config.temperature,
                            top_p=0.95 if config.temperature > 0 else 1.0, seed=config.seed)  # fmt: skip
    out = [{"prompt": p, "output": c.text} for p, (c,) in zip(prompts, engine.generate(batch, params), strict=True)]
    return {"samples": out, "chat_template": chat, "temperature": config.temperature, "seed": config.seed,
            "max_new_tokens": config.sample_tokens}  # fmt: skip


def explained_examples(chain: Chain, config: Any) -> dict[str, Any]:
    """For a classifier: a few texts (config.explain_texts, else the first of its eval test set) explained
    by integrated gradients and occlusion (llmchain.explain) — {"examples": [...], "html": page} — or the
    reason there are none. Language models get none (their card shows sample generations)."""
    cfg = _json(chain.model / "config.json") if chain.model is not None else None
    if not cfg or not cfg.get("id2label") or config.explain == 0:
        return {"examples": [], "reason": "not a classifier" if config.explain else "turned off (explain: 0)"}
    texts = list(config.explain_texts)
    if not texts:
        from llmchain.data.tables import read_labelled

        tests = [r["test"] for _, r in chain.evals if r.get("kind") == "eval-classify" and r.get("test")]
        test = tests[-1] if tests else None
        try:
            texts = read_labelled(test).texts if test else []
        except Exception:  # noqa: BLE001 — the eval's test file may be gone; the card says so
            texts = []
    if not texts:
        return {"examples": [], "reason": "no texts (set explain_texts, or evaluate with `llmchain eval classify`)"}
    try:
        from llmchain.explain.classify import explain_text
        from llmchain.explain.html import classifier_section, page
        from llmchain.model.classifier import load_classifier

        clf = load_classifier(chain.model)
        exs = [explain_text(clf, t, methods=("ig", "occlusion")) for t in texts[: config.explain]]
    except Exception as e:  # a card must still be written when the model cannot run here
        return {"examples": [], "reason": f"could not explain: {str(e).splitlines()[0]}"}
    out = []
    for ex in exs:
        t = ex.tokens
        words = [(t.text[a:b].strip(), s) for (a, b), s, sp in zip(t.spans, ex.scores["ig"], t.special, strict=True)
                 if not sp and t.text[a:b].strip()]  # fmt: skip
        top = sorted(words, key=lambda w: -abs(w[1]))[:5]
        out.append({"text": t.text, "label": ex.label, "probability": ex.prob, "ig_delta": ex.ig_delta,
                    "top_tokens": [[w, round(s, 4)] for w, s in top]})  # fmt: skip
    return {"examples": out, "html": page("Explained examples", [classifier_section(ex) for ex in exs])}


def build_card(start: str | Path, out_dir: str | Path | None = None, config: Any = None,
               extra_evals: list[Path] | None = None) -> tuple[Path, dict[str, Any]]:
    """Trace `start` (a run or model dir), gather the facts, write the card to `out_dir`.

    Default out_dir: RUN/report (or MODEL-report beside a model outside a run). Returns (out_dir,
    facts). UserError when `start` is neither a run nor a model dir.
    """
    from llmchain.config import ReportConfig
    from llmchain.eval import plots

    config = config or ReportConfig()
    chain = trace(start)
    if extra_evals:
        chain.evals = find_eval_reports(chain, extra_evals)
    if out_dir is None:
        out_dir = chain.run / "report" if chain.run else chain.model.parent / f"{chain.model.name}-report"
    out_dir = Path(out_dir)
    facts = {
        "model": model_facts(chain), "training": training_facts(chain), "shards": shard_facts(chain),
        "tokenizer": tokenizer_facts(chain), "data": data_facts(chain),
        "evals": [{"path": str(p), **r} for p, r in chain.evals],
        "base_models": [str(p) for p in chain.base_models], "other_inputs": chain.other_inputs,
    }  # fmt: skip
    facts["generations"] = sample_generations(chain, config)
    explained = explained_examples(chain, config)
    facts["explanations"] = {k: v for k, v in explained.items() if k != "html"}
    with atomic_dir(out_dir) as tmp:
        images: dict[str, str] = {}
        lm_baselines = cardtext.baseline_bpb(facts["evals"])
        if facts["training"]["records"]:
            name = plots.loss_curves(tmp / "loss.png", facts["training"]["records"], lm_baselines)
            if name:
                images["loss"] = name
        if facts["data"].get("steps"):
            first = facts["data"]["steps"][0]
            funnel = [("read", first.get("out", 0))] + [(s["name"], s.get("out", 0)) for s in facts["data"]["steps"][1:]]
            images["funnel"] = plots.funnel(tmp / "data_funnel.png", funnel)
        for i, ev in enumerate(facts["evals"]):
            for png in ev.get("plots") or []:
                src = Path(ev["path"]).parent / png
                if src.is_file():
                    dst = f"eval{i}_{png}"
                    shutil.copy2(src, tmp / dst)
                    images[f"eval{i}:{png}"] = dst
        if explained.get("html"):
            atomic_write_text(tmp / "explained.html", explained["html"])
        md = cardtext.markdown(facts, images, config)
        atomic_write_text(tmp / "report.md", md)
        atomic_write_text(tmp / "report.html", cardtext.html(md, title=f"Model card: {cardtext.model_name(facts)}"))
        slim = {k: v for k, v in facts.items() if k != "training"}
        slim["training"] = {k: v for k, v in facts["training"].items() if k != "records"}
        slim["images"] = images
        atomic_write_json(tmp / "report.json", {"kind": "model-card", **slim})
        write_manifest(tmp, "model-card", inputs={k: v for k, v in (("model", chain.model), ("run", chain.run))
                                                  if v is not None}, hash_inputs=False,
                       counts={"evals": len(facts["evals"]), "images": len(images)})  # fmt: skip
    return out_dir, facts


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
