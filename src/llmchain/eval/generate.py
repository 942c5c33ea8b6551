"""`llmchain eval generate`: generated text (summaries, translations, answers) against references.

Metrics: corpus BLEU and chrF (sacrebleu), ROUGE-1/2/L (Chinese-aware tokens), exact match. Beside
the model: the lead of the prompt cut to the median reference length (a copy baseline — strong for
news summaries, a floor for translation) and, given `--train`, the reference of the nearest training
prompt by TF-IDF. Outputs come from the model (greedy by default, through the tokenizer's chat
template when it has one) or from a `--predictions` file.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from llmchain.data.tables import pick_column, read_records
from llmchain.errors import DataError, UserError
from llmchain.eval.baselines import BASELINE_TITLES, TOKEN_RE, lead_baseline, nearest_reference_baseline
from llmchain.eval.bootstrap import verdicts
from llmchain.eval.io import read_lines, write_report
from llmchain.eval.metrics import generation_metrics

COLUMNS = ["bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"]
WORD_COLUMNS = ["rouge1_words", "rouge2_words", "rougeL_words"]  # Chinese references: ROUGE over jieba words
PROMPT_FIELDS = ("prompt", "source", "src", "question", "abstract", "document", "article", "text", "sentences")
REFERENCE_FIELDS = ("references", "reference", "refs", "target", "tgt", "answer", "answers", "summary",
                    "title", "output")  # fmt: skip


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)  # e.g. Opinosis: a topic's sentences are the text to summarise
    return None


def read_pairs(
    path: str | os.PathLike,
    prompt_field: str | None = None,
    reference_field: str | None = None,
    reference_files: list[str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """(prompts, reference lists) from JSONL/JSON/TSV/CSV, or a plain text file of prompts (one a line)
    with line-aligned `reference_files`. Instruction data ({instruction, input, output}) works as is:
    prompt = instruction + input, reference = output. Raises UserError/DataError naming file:line."""
    p = Path(path)
    if reference_files:
        prompts = read_lines(p, "prompts")
        refs_by_file = [read_lines(f, "references") for f in reference_files]
        for f, lines in zip(reference_files, refs_by_file, strict=True):
            if len(lines) != len(prompts):
                raise UserError(f"{f}: {len(lines)} lines but {p} has {len(prompts)}; references must be line-aligned")
        return prompts, [[lines[i] for lines in refs_by_file] for i in range(len(prompts))]
    rows, lines = read_records(p, "prompt/reference")
    if not rows:
        raise UserError(f"{p}: no rows")
    instruction = prompt_field is None and "instruction" in rows[0] and "prompt" not in rows[0]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    pcol = None if instruction else pick_column(p, columns, prompt_field, PROMPT_FIELDS, "--prompt-field")
    rcol = pick_column(p, columns, reference_field, REFERENCE_FIELDS, "--reference-field")
    prompts, refs = [], []
    for row, line in zip(rows, lines, strict=True):
        if instruction:
            parts = [row.get("instruction"), row.get("input")]
            prompt = "\n\n".join(x.strip() for x in parts if isinstance(x, str) and x.strip())
        else:
            prompt = _as_text(row.get(pcol))
        ref = row.get(rcol)
        if ref is None and reference_field is None:  # rows may mix "reference" and "references"
            ref = next((row[f] for f in REFERENCE_FIELDS if row.get(f) is not None), None)
        ref_list = [ref] if isinstance(ref, str) else ref
        if not prompt:
            raise DataError(f"{p}:{line}: empty or missing prompt")
        if not isinstance(ref_list, list) or not ref_list or not all(isinstance(r, str) for r in ref_list):
            raise DataError(f"{p}:{line}: field {rcol!r} must be a string or a non-empty list of strings")
        prompts.append(prompt)
        refs.append(ref_list)
    return prompts, refs


def read_predictions(path: str | os.PathLike, n: int) -> list[str]:
    """Predictions: a .jsonl with "prediction" (or "output"/"text") per line, else one per line."""
    p = Path(path)
    if p.name.lower().endswith(".jsonl"):
        rows, lines = read_records(p, "predictions")
        out = []
        for row, line in zip(rows, lines, strict=True):
            value = next((row[k] for k in ("prediction", "output", "text") if isinstance(row.get(k), str)), None)
            if value is None:
                raise DataError(f"{p}:{line}: no string field 'prediction'")
            out.append(value)
    else:
        out = read_lines(p, "predictions")
    if len(out) != n:
        raise UserError(f"{p}: {len(out)} predictions for {n} examples; they must be aligned one to one")
    return out


def _progress(total: int):
    """A callback drawing a progress bar on a terminal (called with the count done; None to close)."""
    if not sys.stderr.isatty():
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("generating", total=total)
    bar.start()

    def update(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return update


def generate_outputs(
    model_dir: str | os.PathLike,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    chat_template: bool | None = None,
    stop: list[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    instruction: str | None = None,
) -> dict[str, Any]:
    """Generate one output per prompt with the causal model in `model_dir`.

    Greedy at temperature 0. `chat_template` None = use the tokenizer's template when it has one.
    `instruction` goes before each prompt with a blank line (as the Alpaca records an SFT trained on).
    `device` "auto" is cuda when there is one.
    Long prompts keep their last tokens (counted in "truncated"). Returns {outputs, seconds,
    truncated, chat_template, new_tokens}. UserError for a missing model/tokenizer or a tokenizer
    whose ids do not fit the model.
    """
    from llmchain.infer.engine import load_engine
    from llmchain.infer.sampling import SamplingParams
    from llmchain.model.io import read_config

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = read_config(model_dir)
    context = config.max_position_embeddings
    if max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {max_new_tokens} must be below the model's context ({context})")
    # The serving engine, batched as the server batches; it stops at EOS and end-of-turn tokens.
    engine = load_engine(model_dir, device=device)
    tok = engine.tokenizer
    use_chat = bool(getattr(tok, "chat_template", None)) if chat_template is None else chat_template
    if use_chat and not getattr(tok, "chat_template", None):
        raise UserError(f"{model_dir}: --chat-template asked for, but the tokenizer has none")
    batch, truncated = [], 0
    for prompt in prompts:
        if instruction:
            prompt = f"{instruction.strip()}\n\n{prompt.strip()}"
        if use_chat:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
        else:
            text = prompt
        ids = tok(text, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        if len(ids) + max_new_tokens > context:
            ids, truncated = ids[-(context - max_new_tokens):], truncated + 1
        batch.append(ids)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            stop=[s for s in stop or [] if s][:16])  # fmt: skip
    t0 = time.perf_counter()
    outputs, new_tokens = [], 0
    chunk = 64  # a progress bar per chunk of prompts on a terminal: the engine batches within a chunk
    progress = _progress(len(batch))
    for start in range(0, len(batch), chunk):
        for (c,) in engine.generate(batch[start : start + chunk], params):
            outputs.append(c.text.strip())
            stopped = bool(c.token_ids) and c.token_ids[-1] in engine.eos_ids  # the stop token is no output
            new_tokens += len(c.token_ids) - stopped
        progress(min(start + chunk, len(batch)))
    progress(None)
    return {"outputs": outputs, "seconds": time.perf_counter() - t0, "truncated": truncated,
            "chat_template": use_chat, "new_tokens": new_tokens}  # fmt: skip


def evaluate_generation(
    data: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    train: str | os.PathLike | None = None,
    prompt_field: str | None = None,
    reference_field: str | None = None,
    reference_files: list[str] | None = None,
    limit: int | None = None,
    samples: int = 5,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Score the model's (or `predictions`') outputs and the baselines on `data`; returns the report dict."""
    if model_dir is not None and predictions is not None:
        raise UserError("give --model or --predictions, not both")
    prompts, refs = read_pairs(data, prompt_field, reference_field, reference_files)
    given = read_predictions(predictions, len(prompts)) if predictions is not None else None
    if limit is not None:
        prompts, refs = prompts[:limit], refs[:limit]
        given = given[:limit] if given is not None else None
    systems: list[dict[str, Any]] = []
    outputs: dict[str, list[str]] = {}
    info: dict[str, Any] = {}
    if model_dir is not None:
        if not Path(model_dir).is_dir():
            raise UserError(f"{model_dir}: no such model directory")
        g = generate_outputs(model_dir, prompts, **gen_kwargs)
        outputs["model"] = g.pop("outputs")
        info = g
        systems.append({"name": "model", "title": f"model ({Path(model_dir).name})", "baseline": False,
                        **generation_metrics(outputs["model"], refs), "seconds": g["seconds"]})
    elif given is not None:
        outputs["predictions"] = given
        systems.append({"name": "predictions", "title": f"predictions ({Path(predictions).name})",
                        "baseline": False, **generation_metrics(given, refs)})
    train_prompts, train_refs = read_pairs(train, prompt_field, reference_field) if train else ([], [])
    length_refs = train_refs or refs
    length = max(1, int(statistics.median(len(TOKEN_RE.findall(r[0])) for r in length_refs)))
    outputs["lead"] = lead_baseline(prompts, length)
    systems.append({"name": "lead", "title": f"{BASELINE_TITLES['lead']} ({length} tokens)", "baseline": True,
                    **generation_metrics(outputs["lead"], refs)})
    if train:
        outputs["nearest"] = nearest_reference_baseline(train_prompts, [r[0] for r in train_refs], prompts)
        systems.append({"name": "nearest", "title": BASELINE_TITLES["nearest"], "baseline": True,
                        **generation_metrics(outputs["nearest"], refs)})
    shown = [{"prompt": prompts[i], "references": refs[i], **{k: v[i] for k, v in outputs.items()}}
             for i in range(min(samples, len(prompts)))]  # fmt: skip
    return {
        "kind": "eval-generate",
        "task": "generation",
        "model": str(Path(model_dir).resolve()) if model_dir is not None else None,
        "predictions": str(Path(predictions).resolve()) if predictions is not None else None,
        "data": str(Path(data).resolve()),
        "train": str(Path(train).resolve()) if train else None,
        "n": len(prompts),
        "columns": COLUMNS + [c for c in WORD_COLUMNS if c in systems[0]],
        "primary": "chrf",
        "higher_is_better": True,
        "config": {"lead_tokens": length, "lead_length_from": "train references" if train_refs
                   else "evaluation references (median length only)", **{k: v for k, v in gen_kwargs.items()},
                   **{k: v for k, v in info.items() if k != "seconds"}},  # fmt: skip
        "systems": systems,
        "notes": [v for m in ("chrf", "bleu", "rougeL", "rougeL_words") for v in verdicts(systems, m)],
        "samples": shown,
        "outputs": {"prompts": prompts, "references": refs, **outputs},
    }


def run_generate_eval(out_dir: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """`evaluate_generation(**kwargs)` + write OUT/report.json, outputs.jsonl and a bar chart."""
    from llmchain.eval import plots

    report = evaluate_generation(**kwargs)
    outputs = report.pop("outputs")

    def draw(tmp: Path) -> list[str]:
        # every output beside its prompt and references, for reading what the numbers summarise
        keys = [k for k in outputs if k not in ("prompts", "references")]
        rows = [{"prompt": p, "references": r, **{k: outputs[k][i] for k in keys}}
                for i, (p, r) in enumerate(zip(outputs["prompts"], outputs["references"], strict=True))]
        (tmp / "outputs.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return [plots.bars(tmp / "chrf.png", report["systems"], "chrf", "chrF (higher is better)")]

    inputs = {"model": report["model"], "data": report["data"], "train": report["train"],
              "predictions": report["predictions"]}  # fmt: skip
    out = write_report(out_dir, report, inputs, draw)
    return report, out

