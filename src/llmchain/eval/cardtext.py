"""The words of the model card: facts (from report.py) → Markdown → standalone HTML.

Every number printed here comes from a recorded artifact; what is absent is written as missing.
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from typing import Any

MISSING = "_not recorded_"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1a202c;line-height:1.5}
h1{border-bottom:2px solid #2b6cb0;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #e2e8f0;padding:.3em .7em}
th{background:#f7fafc;text-align:left}td{text-align:right}td:first-child{text-align:left}
img{max-width:100%;border:1px solid #e2e8f0;margin:.5em 0}code{background:#f7fafc;padding:0 .2em}
pre{background:#f7fafc;padding:.8em;overflow-x:auto;white-space:pre-wrap}blockquote{color:#4a5568;margin-left:0;
padding-left:1em;border-left:3px solid #cbd5e0}
"""

METRIC_NAMES = {
    "bits_per_byte": "bits/byte ↓", "loss": "loss (nats/token) ↓", "perplexity": "perplexity ↓",
    "accuracy": "accuracy", "macro_precision": "macro P", "macro_recall": "macro R", "macro_f1": "macro F1",
    "bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
    "exact_match": "exact match %", "rouge1_words": "ROUGE-1 (words)", "rouge2_words": "ROUGE-2 (words)",
    "rougeL_words": "ROUGE-L (words)",
}  # fmt: skip


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def fmt_metric(system: dict[str, Any], metric: str, sep: str = " ") -> str:
    """A system's metric with its 95 % bootstrap interval when the report has one: `0.8531 [0.8364, 0.8694]`."""
    v = system.get(metric)
    if v is None:
        return "—"
    ci = (system.get("ci") or {}).get(metric)
    if not ci:
        return fmt(v)
    # fractions and bits/byte or nats to 4 places (bits/byte rows straddle 2), percentages (BLEU, ROUGE) to 2
    digits = 4 if abs(v) < 2 or metric in ("bits_per_byte", "loss") else 2
    return f"{fmt(v, digits)}{sep}[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def md_escape(text: str) -> str:
    """Text shown literally in Markdown (no emphasis, links or HTML from the model's output)."""
    return "".join("\\" + ch if ch in "\\`*_[]<>#|" else ch for ch in text.replace("\n", " "))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _human_time(s: float | None) -> str:
    if s is None:
        return MISSING
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def model_name(facts: dict[str, Any]) -> str:
    m = facts["model"]
    if not m.get("found"):
        return "(no model found)"
    p = Path(m["path"])
    return f"{p.parent.name}/{p.name}" if p.name in ("final",) or p.name.startswith("step-") else p.name


def baseline_bpb(evals: list[dict[str, Any]]) -> dict[str, float]:
    """{baseline title: bits/byte} from eval-lm reports (for the loss-curve plot)."""
    out = {}
    for ev in evals:
        if ev.get("kind") == "eval-lm":
            for s in ev.get("systems", []):
                if s.get("baseline") and isinstance(s.get("bits_per_byte"), (int, float)):
                    out[s["title"]] = float(s["bits_per_byte"])
    return out


def default_prompts(chain: Any, n: int) -> list[str]:
    """The first words of the first val (else train) documents: prompts in the model's own domain."""
    from llmchain.eval.lm import decode_split, shards_tokenizer

    if chain.shards is None:
        return ["The"] * n
    try:
        tok = shards_tokenizer(chain.shards, chain.model)
        docs = decode_split(chain.shards, "val", tok, max_tokens=4000) or decode_split(chain.shards, "train", tok,
                                                                                        max_tokens=4000)
    except Exception:  # prompts are a nicety; never fail a card over them
        return ["The"] * n
    text = " ".join(docs).split()
    prompts = [" ".join(text[i * 40: i * 40 + 6]) for i in range(n) if len(text) > i * 40 + 6]
    return prompts or ["The"] * n


def _sources(d: dict[str, Any]) -> list[str]:
    lines = []
    for s in d.get("sources", [])[:20]:
        lines.append(f"- `{s.get('path')}`" + (f" (sha256 `{s['sha256'][:12]}…`)" if s.get("sha256") else ""))
    if len(d.get("sources", [])) > 20:
        lines.append(f"- … and {len(d['sources']) - 20} more")
    return lines


def data_section(facts: dict[str, Any], images: dict[str, str]) -> list[str]:
    d = facts["data"]
    out = ["## Data", ""]
    if not d.get("found"):
        src = d.get("packed_from")
        out += ["No prepared documents dir (`llmchain data prepare`) was found along the chain. "
                + (f"The token shards were packed directly from `{src}`, so no cleaning, quality filtering, PII "
                   "redaction or deduplication was recorded for this model's data." if src else
                   "Data sources, filter removals, PII redactions and the dedup rate are not recorded."), ""]
        return out
    st = d["stats"]
    out += [f"Documents dir: `{d['path']}`", "", "**Sources**", ""] + (_sources(d) or [MISSING]) + [""]
    if not d["has_stats"]:
        return out + ["stats.json is missing: filter removals, PII redactions and dedup rate are not recorded.", ""]
    out += [table(["count", "value"], [
        ["input files", fmt(st.get("files"))], ["input bytes", fmt(st.get("input_bytes"))],
        ["records read", fmt(st.get("records"))], ["unreadable records", fmt(st.get("unreadable"))],
        ["documents kept", fmt(st.get("kept"))], ["documents removed", fmt(st.get("removed"))],
    ])]  # fmt: skip
    out += ["**What each step removed**", ""]
    rows = []
    for s in d["steps"]:
        removed = sum(s.get("removed", {}).values())
        reasons = ", ".join(f"{r}: {c:,}" for r, c in sorted(s.get("removed", {}).items(), key=lambda kv: -kv[1])[:4])
        rows.append([s.get("name"), fmt(s.get("in")), fmt(s.get("out")), fmt(removed), reasons or "—"])
    out += [table(["step", "in", "out", "removed", "reasons"], rows)]
    if "funnel" in images:
        out += [f"![documents kept after each step]({images['funnel']})", ""]
    pii = d["pii"]
    if any("pii" in s.get("name", "") for s in d["steps"]):
        items = ", ".join(f"{k}: {v:,}" for k, v in sorted(pii.items())) or "none found"
        out += [f"**PII redactions** (placeholders replaced the matches): {items}", ""]
    else:
        out += ["**PII redactions**: no PII step ran in the data stage (none recorded).", ""]
    if d["dedup_rate"] is not None:
        out += [f"**Deduplication**: {d['dedup_removed']:,} documents removed as duplicates "
                f"({100 * d['dedup_rate']:.2f}% of those reaching dedup).", ""]  # fmt: skip
    else:
        out += ["**Deduplication**: no dedup step ran (none recorded).", ""]
    return out


def tokenizer_section(facts: dict[str, Any]) -> list[str]:
    t, s = facts["tokenizer"], facts["shards"]
    out = ["## Tokenizer and training tokens", ""]
    if not t.get("found"):
        out += ["Tokenizer: " + MISSING, ""]
    else:
        trained = ", ".join(f"{k} {fmt(v)}" for k, v in t["trained_on"].items()) or MISSING
        out += [table(["tokenizer", ""], [
            ["path", f"`{t['path']}`"], ["type", f"{t['type']}" + (" (byte-level)" if t["byte_level"] else "")],
            ["vocabulary", fmt(t["vocab_size"])], ["special tokens", ", ".join(f"`{x}`" for x in t["special"]) or "—"],
            ["chat template", fmt(t["chat_template"])], ["trained on", trained],
        ])]  # fmt: skip
    if not s.get("found"):
        return out + ["Token shards: " + MISSING, ""]
    info = s["info"]
    rows = []
    for split, e in (info.get("splits") or {}).items():
        tok, b = e.get("tokens"), e.get("bytes")
        rows.append([split, fmt(e.get("documents")), fmt(tok), fmt(b), fmt(b / tok, 3) if tok and b else "—"])
    out += [f"Token shards: `{s['path']}` ({info.get('dtype', '?')}, split by {info.get('split_by', MISSING)})", "",
            table(["split", "documents", "tokens", "UTF-8 bytes", "bytes/token"], rows)]  # fmt: skip
    return out


def model_section(facts: dict[str, Any]) -> list[str]:
    m = facts["model"]
    if not m.get("found"):
        return ["## Model", "", "No model weights were found in this dir.", ""]
    c = m["config"]
    rows = [["parameters", f"{m['params']:,} ({m['params'] / 1e6:.2f} M)"], ["weights on disk", f"{m['bytes'] / 1e6:.2f} MB"]]
    rows += [[k, fmt(v)] for k, v in c.items()]
    out = ["## Model", "", f"`{m['path']}` — a decoder-only transformer (Llama family; opens in "
           "`transformers.AutoModelForCausalLM`).", "", table(["", ""], rows)]  # fmt: skip
    if facts["base_models"]:
        out += ["Fine-tuned from: " + ", ".join(f"`{b}`" for b in facts["base_models"]), ""]
    return out


def training_section(facts: dict[str, Any], images: dict[str, str]) -> list[str]:
    tr = facts["training"]
    out = ["## Training", ""]
    if not tr["run"] and not tr["config"]:
        return out + ["No training run was found (no metrics.jsonl / config.yaml): training is not recorded.", ""]
    cfg = tr["config"]
    hw = ", ".join(f"{k}: {v}" for k, v in tr["hardware"].items()) or MISSING
    rows = [["run dir", f"`{tr['run']}`" if tr["run"] else MISSING],
            ["optimizer steps", fmt(tr["steps"])], ["training tokens", fmt(tr["tokens"])],
            ["wall time", _human_time(tr["elapsed_s"])], ["throughput", fmt(tr["tokens_per_s"], 0) + " tokens/s"
                                                          if tr["tokens_per_s"] else MISSING],
            ["device (config) / precision", f"{cfg.get('device', MISSING)} / {cfg.get('precision', MISSING)}"],
            ["hardware", hw], ["platform", tr["platform"] or MISSING], ["torch", tr["torch"] or MISSING],
            ["preset / seq_len", f"{cfg.get('preset', MISSING)} / {cfg.get('seq_len') or 'default'}"],
            ["batch × grad_accum", f"{cfg.get('batch_size', '?')} × {cfg.get('grad_accum', '?')}"],
            ["lr / warmup / weight decay", f"{cfg.get('lr', '?')} / {cfg.get('warmup_steps', '?')} / "
                                           f"{cfg.get('weight_decay', '?')}"],
            ["seed", str(cfg.get("seed", MISSING))], ["final train loss", fmt(tr["final_train_loss"])]]  # fmt: skip
    rows += [[f"final val {k}", fmt(v)] for k, v in tr["final_val"].items() if isinstance(v, (int, float))]
    out += [table(["", ""], rows)]
    if "loss" in images:
        out += [f"![loss curves]({images['loss']})", ""]
    else:
        out += ["Loss curves: " + MISSING + " (no metrics.jsonl rows).", ""]
    return out


def eval_section(facts: dict[str, Any], images: dict[str, str]) -> list[str]:
    out = ["## Evaluation beside classical baselines", ""]
    if not facts["evals"]:
        return out + ["No `llmchain eval` reports were found for this model (run `llmchain eval lm|classify|generate` "
                      "with the model; their report.json files under the run dir are picked up).", ""]  # fmt: skip
    for i, ev in enumerate(facts["evals"]):
        cols = ev.get("columns") or []
        where = ev.get("data") or ev.get("test")
        out += [f"### {ev.get('task', ev.get('kind'))}: `{Path(where).name if where else '?'}`", ""]
        out += [f"{fmt(ev.get('n'))} {'bytes' if ev.get('kind') == 'eval-lm' else 'examples'} · report "
                f"`{ev['path']}`" + (f" · baselines fitted on `{ev.get('train') or ev.get('train_text')}`"
                                     if ev.get("train") or ev.get("train_text") else ""), ""]  # fmt: skip
        rows = []
        for s in ev.get("systems", []):
            name = f"**{s.get('title', s['name'])}**" if not s.get("baseline") else f"{s.get('title', s['name'])} (baseline)"
            rows.append([name] + [fmt_metric(s, c) for c in cols])
        out += [table(["system"] + [METRIC_NAMES.get(c, c) for c in cols], rows)]
        if any(s.get("ci") for s in ev.get("systems", [])):
            out += ["[low, high]: 95 % bootstrap interval over the test items, the same resamples for every "
                    "system; two systems whose intervals overlap are not called better.", ""]
        if any(s.get(c) is None for s in ev.get("systems", []) for c in cols):
            out += ["— : does not apply to that system (an n-gram over bytes has no per-token loss).", ""]
        out += [f"_{n}_" for n in ev.get("notes", []) + ev.get("warnings", [])]
        out += [f"![{ev.get('task', 'evaluation')} chart]({v})" for k, v in images.items()
                if k.startswith(f"eval{i}:")] + [""]  # fmt: skip
    return out


def generations_section(facts: dict[str, Any]) -> list[str]:
    g = facts["generations"]
    out = ["## Sample generations", ""]
    if not g["samples"]:
        out += [f"None: {g.get('reason', MISSING)}.", ""]
    else:
        out += [f"Sampled now with temperature {g['temperature']}, top-p 0.95, seed {g['seed']}, "
                f"{g['max_new_tokens']} new tokens{', through the chat template' if g['chat_template'] else ''}.", ""]
        for s in g["samples"]:
            out += [f"**Prompt:** {md_escape(s['prompt'])}", "", "```text", s["prompt"] + s["output"], "```", ""]
    for ev in facts["evals"]:
        for s in (ev.get("samples") or [])[:3]:
            out += [f"From `{ev.get('kind')}` on `{Path(ev.get('data', '?')).name}`:", "",
                    "```text", "PROMPT: " + s["prompt"][:500], "REFERENCE: " + " | ".join(s["references"])[:300]]
            out += [f"{k.upper()}: {v}"[:400] for k, v in s.items() if k not in ("prompt", "references")]
            out += ["```", ""]
    return out


def explanations_section(facts: dict[str, Any]) -> list[str]:
    ex = facts.get("explanations") or {}
    if not ex.get("examples"):
        return []  # language models: their samples are the generations above
    out = ["## Explained examples", "",
           "Which tokens made the classifier decide: layer integrated gradients on the embeddings (Captum), "
           "checked by occlusion. Heatmaps of both: [explained.html](explained.html).", ""]  # fmt: skip
    rows = [[e["text"][:160] + ("…" if len(e["text"]) > 160 else ""), e["label"], fmt(e["probability"], 3),
             ", ".join(f"{w} ({s:+.2f})" for w, s in e["top_tokens"])] for e in ex["examples"]]  # fmt: skip
    return out + [table(["text", "predicted", "p", "tokens that weigh most (IG, log-odds)"], rows), ""]


def use_section(facts: dict[str, Any], config: Any) -> list[str]:
    tr, m = facts["training"], facts["model"]
    out = ["## Intended use and limitations", ""]
    out += [config.intended_use if config.intended_use else
            "Intended use (default statement, none was given): learning, experiments and research on how a language "
            "model is built and evaluated end to end; a baseline for your own data. Not intended for decisions "
            "about people, for facts, or for any production use without your own evaluation.", ""]  # fmt: skip
    lim = []
    if m.get("found"):
        lim.append(f"Small: {m['params'] / 1e6:.2f} M parameters, context of "
                   f"{m['config'].get('max_position_embeddings', '?')} tokens.")
    if tr.get("tokens"):
        lim.append(f"Trained on {tr['tokens']:,} tokens only: expect fluent-looking but often meaningless or false text.")
    for ev in facts["evals"]:
        sys_ = ev.get("systems", [])
        model = next((s for s in sys_ if not s.get("baseline")), None)
        base = [s for s in sys_ if s.get("baseline")]
        key = ev.get("primary")
        if model and base and key and all(isinstance(s.get(key), (int, float)) for s in [model, *base]):
            best = (min if ev.get("higher_is_better") is False else max)(base, key=lambda s: s[key])
            better = model[key] < best[key] if ev.get("higher_is_better") is False else model[key] > best[key]
            lim.append(f"On {ev.get('task')} ({METRIC_NAMES.get(key, key)}) the model {'beats' if better else 'does NOT beat'} "
                       f"its best classical baseline, {best.get('title')} ({fmt(model[key])} vs {fmt(best[key])}).")
    d = facts["data"]
    if d.get("found") and any("pii" in s.get("name", "") for s in d.get("steps", [])):
        n = sum(v for k, v in d["pii"].items() if k != "docs_redacted")
        lim.append(f"PII redaction ran on the training data ({n:,} replacements). It matches patterns (e-mail, phone, "
                   "IP, card and ID numbers), not names or addresses: the model may still reproduce personal data.")
    else:
        lim.append("No PII redaction is recorded for the training data: the model may reproduce personal data it saw.")
    lim.append("No safety tuning, no RLHF, no filtering of outputs; biases of the training text are inherited.")
    if config.limitations:
        lim.append(config.limitations)
    return out + [f"- {x}" for x in lim] + [""]


def markdown(facts: dict[str, Any], images: dict[str, str], config: Any) -> str:
    name = model_name(facts)
    m, tr = facts["model"], facts["training"]
    head = [f"# Model card: {name}", ""]
    summary = []
    if m.get("found"):
        summary.append(f"{m['params'] / 1e6:.2f} M parameters")
    if tr.get("tokens"):
        summary.append(f"{tr['tokens']:,} training tokens")
    if tr.get("elapsed_s"):
        summary.append(f"{_human_time(tr['elapsed_s'])} of training")
    head += [("> " + " · ".join(summary)) if summary else "> (model facts not recorded)", ""]
    parts = (head + model_section(facts) + data_section(facts, images) + tokenizer_section(facts)
             + training_section(facts, images) + eval_section(facts, images) + generations_section(facts)
             + explanations_section(facts)
             + use_section(facts, config))  # fmt: skip
    parts += ["---", "", "Generated by `llmchain report` from the manifests along the chain. Facts that were not "
              "recorded are marked as such, never estimated.", ""]  # fmt: skip
    return "\n".join(parts)


def html(md: str, title: str) -> str:
    """A standalone HTML page of the Markdown (markdown-it, CommonMark + tables); images stay relative."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>\n{body}</body></html>\n")  # fmt: skip
