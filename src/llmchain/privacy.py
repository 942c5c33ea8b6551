"""`llmchain privacy audit RUN`: what a trained model memorised, measured with the canaries that
`data prepare --canaries N` planted (see llmchain.data.canaries), plus a membership-inference baseline.

For every canary (Carlini et al. 2019, "The Secret Sharer"):

- exposure = log2 |R| − log2 rank, where R is the space of possible secrets and rank is the canary's
  place when all of R is ordered by the model's log-perplexity of the whole sentence (rank 1 = the most
  likely). When |R| ≤ `exact_max` every candidate is scored and the rank is exact. Otherwise we use the
  paper's extrapolation: score `samples` random candidates, fit a skew-normal to their log-perplexities
  and read exposure = −log2 P(X ≤ canary's log-perplexity) off the fitted distribution. A secret the
  model never saw has a uniform rank: its exposure is small (mean ≈ log2 e ≈ 1.44 bits; P(≥ t) = 2^−t).
- extraction: greedy decoding from the template's prefix; extracted when the continuation starts with
  the secret.

Membership inference (Yeom et al. 2018): the loss-threshold attack's ROC AUC at telling train chunks
from held-out chunks of the same documents dir (0.5 = the model leaks nothing about membership).

The report is an `eval-privacy` report.json: the model card (`llmchain report`) shows it with the
other evaluations, with the exposure plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from llmchain.config import StageConfig
from llmchain.errors import UserError

PLOT = "privacy_exposure.png"


class PrivacyAuditConfig(StageConfig):
    """`llmchain privacy audit` (and the recipe stage `privacy_audit`)."""

    exact_max: int = Field(20_000, ge=1, description="|R| up to this: rank by scoring every candidate")
    samples: int = Field(
        4000, ge=100, description="candidates scored for the skew-normal fit when |R| is larger"
    )
    batch_size: int = Field(256, ge=1, description="sequences per forward pass")
    mi_samples: int = Field(
        200, ge=10, description="train and held-out chunks each, for membership inference"
    )
    mi_tokens: int = Field(64, ge=4, description="tokens per membership-inference chunk")
    seed: int = 0
    device: str = "cpu"


# ---------------------------------------------------------------------------------------- scoring


def log_perplexities(model: Any, tok: Any, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """−log2 P(text) under the model, in bits, for each text: every token given the ones before it,
    after an end-of-text token (how `data pack` puts a document in the training stream)."""
    eos = _eos_id(model, tok)
    seqs = [[eos, *ids] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return _token_nll(model, seqs, batch_size)[0] / math.log(2)


def _token_nll(model: Any, seqs: list[list[int]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed negative log-likelihood in nats, number of predicted tokens) of each token sequence."""
    import torch

    device = next(model.parameters()).device
    total, count = np.zeros(len(seqs)), np.zeros(len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths together: less padding
    for start in range(0, len(seqs), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width - 1), dtype=torch.bool)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i]) - 1] = True
        ids = ids.to(device)
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])  # right padding cannot change earlier positions (causal)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        total[idx] = (-(logp.cpu() * mask).sum(dim=1)).double().numpy()
        count[idx] = mask.sum(dim=1).numpy()
    return total, count


def _eos_id(model: Any, tok: Any) -> int:
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.config.eos_token_id
    if eos is None:
        raise UserError("the model's tokenizer has no end-of-text token (needed as the start of a document)")
    return int(eos)


def _candidates(alphabet: str, length: int) -> list[str]:
    """Every secret of R, in order (only called when |R| ≤ exact_max)."""
    import itertools

    return ["".join(t) for t in itertools.product(alphabet, repeat=length)]


def exposure(
    model: Any, tok: Any, canary: Any, cfg: PrivacyAuditConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """The canary's exposure in bits (exact rank, or the skew-normal extrapolation) and how it was got."""
    from llmchain.data.canaries import ALPHABETS, space_size

    alphabet = ALPHABETS[canary.alphabet]
    size = space_size(canary.alphabet, canary.secret_length)
    if size <= cfg.exact_max:
        cands = _candidates(alphabet, canary.secret_length)
        lp = log_perplexities(model, tok, [canary.with_secret(s) for s in cands], cfg.batch_size)
        own = float(lp[cands.index(canary.secret)])  # scored in the same batches as the others
        # rank 1 = the most likely; ties (the canary itself included) rank ahead of it:
        # a tie is not memorisation
        rank = int(np.sum(lp < own)) + int(np.sum(lp == own))
        return {
            "method": "exact",
            "space": size,
            "rank": rank,
            "log_perplexity": own,
            "exposure": math.log2(size) - math.log2(rank),
        }
    from scipy import stats

    own = float(log_perplexities(model, tok, [canary.text])[0])
    picks = rng.integers(0, len(alphabet), size=(cfg.samples, canary.secret_length))
    secrets = ["".join(alphabet[j] for j in row) for row in picks]
    lp = log_perplexities(
        model, tok, [canary.with_secret(s) for s in secrets if s != canary.secret], cfg.batch_size
    )
    a, loc, scale = stats.skewnorm.fit(lp)
    # −log2 P(X ≤ own): the fraction of R more likely than the canary, extrapolated past the sample
    bits = -float(stats.skewnorm.logcdf(own, a, loc, scale)) / math.log(2)
    bits = min(max(bits, 0.0), math.log2(size))
    empirical = (1 + int(np.sum(lp < own))) / (len(lp) + 1)
    return {
        "method": "skew-normal",
        "space": size,
        "samples": len(lp),
        "log_perplexity": own,
        "fit": {"a": float(a), "loc": float(loc), "scale": float(scale)},
        "sample_rank_fraction": empirical,
        "exposure": bits,
    }


def _greedy_continuation(model: Any, tok: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    """The model's greedy continuation of `ids`, through the inference engine (the one way llmchain
    generates), in fp32 so extraction does not depend on the CPU's bf16 support. No stop token: the
    secret must come out whatever follows. All generation of this module goes through here."""
    from llmchain.infer.engine import Engine
    from llmchain.infer.sampling import SamplingParams

    # A fresh engine per call: it snapshots the weights, and a caller may train the model between calls.
    engine = Engine(model, tok, max_batch_size=1, dtype="float32", eos_token_ids=[])
    n = max(0, min(max_new_tokens, engine.max_model_len - len(ids)))
    if n == 0:
        return []
    (c,) = engine.generate([ids], SamplingParams(max_tokens=n, temperature=0))[0]
    return c.token_ids


def extract(model: Any, tok: Any, canary: Any) -> dict[str, Any]:
    """Greedy decoding from the canary's prefix: {"extracted", "continuation"}."""
    eos = _eos_id(model, tok)
    # The prefix without its trailing space: byte-level BPE attaches the space to the secret's first token.
    prompt = canary.prefix.rstrip(" ")
    ids = [eos, *tok(prompt, add_special_tokens=False)["input_ids"]]
    rest = len(tok(canary.text, add_special_tokens=False)["input_ids"]) - (len(ids) - 1)
    new = _greedy_continuation(model, tok, ids, max(rest, 1) + 2)
    text = tok.decode(new, skip_special_tokens=True)
    return {"extracted": text.strip().startswith(canary.secret), "continuation": text}


# ------------------------------------------------------------------------------ membership inference


def membership_inference(
    model: Any,
    tok: Any,
    data_dir: Path,
    val_fraction: float,
    split_by: str,
    skip_ids: set[str],
    cfg: PrivacyAuditConfig,
) -> dict[str, Any]:
    """Loss-threshold attack: ROC AUC of −loss at telling train chunks from held-out chunks."""
    from sklearn.metrics import roc_auc_score

    from llmchain.tokenizer import iter_documents, split_document

    if val_fraction <= 0:
        return {"auc": None, "reason": "the shards have no held-out split (val_fraction 0)"}
    eos = _eos_id(model, tok)
    width = min(cfg.mi_tokens, model.config.max_position_embeddings - 1)
    chunks: dict[str, list[list[int]]] = {"train": [], "val": []}
    for i, doc in enumerate(iter_documents(data_dir)):
        if doc.get("id") in skip_ids:
            continue  # the canary copies are measured by exposure, not here
        for split, piece in split_document(i, doc["text"], val_fraction, split_by):
            ids = tok(piece, add_special_tokens=False)["input_ids"] if piece else []
            for s in range(0, len(ids) - width // 2, width):  # chunks of at least half the width
                chunks[split].append(([eos] if s == 0 else []) + ids[s : s + width])
    if min(len(chunks["train"]), len(chunks["val"])) < 10:
        return {
            "auc": None,
            "reason": f"too few chunks (train {len(chunks['train'])}, held-out {len(chunks['val'])})",
        }
    rng = np.random.default_rng([cfg.seed, 0x4D49])
    picked = {
        k: [v[j] for j in sorted(rng.choice(len(v), min(cfg.mi_samples, len(v)), replace=False))]
        for k, v in chunks.items()
    }
    losses = {}
    for split, seqs in picked.items():
        total, count = _token_nll(model, seqs, cfg.batch_size)
        losses[split] = (total / count).tolist()  # mean nats per token of each chunk
    y = [1] * len(losses["train"]) + [0] * len(losses["val"])
    score = [-v for v in losses["train"] + losses["val"]]  # lower loss → more likely a member
    return {
        "auc": float(roc_auc_score(y, score)),
        "train_chunks": len(losses["train"]),
        "heldout_chunks": len(losses["val"]),
        "chunk_tokens": width,
        "train_loss": float(np.mean(losses["train"])),
        "heldout_loss": float(np.mean(losses["val"])),
        "split": {"val_fraction": val_fraction, "split_by": split_by},
    }


# ------------------------------------------------------------------------------------------ audit


def _copies_in_train(
    rec: dict[str, Any], data_dir: Path, val_fraction: float | None, split_by: str | None
) -> dict[str, int] | None:
    """{canary id: copies whose whole sentence landed in the train split}, or None without a split."""
    if val_fraction is None or split_by is None:
        return None
    from llmchain.tokenizer import iter_documents, split_document

    owner = {p["id"]: c for c in rec["canaries"] for p in c["placements"] if p["kept"]}
    out = {c["id"]: 0 for c in rec["canaries"]}
    for i, doc in enumerate(iter_documents(data_dir)):
        c = owner.get(doc.get("id"))
        if c is not None and any(
            s == "train" and c["text"] in piece
            for s, piece in split_document(i, doc["text"], val_fraction, split_by)
        ):
            out[c["id"]] += 1
    return out


def audit(
    model_dir: str | Path,
    data_dir: str | Path,
    shards_dir: str | Path | None = None,
    config: PrivacyAuditConfig | None = None,
) -> dict[str, Any]:
    """Exposure and extraction of every canary in `data_dir`/canaries.json, and the membership-inference
    AUC, for the model at `model_dir`. `shards_dir` (the packed shards the model trained on) gives the
    train/held-out split. UserError for a missing model, documents dir or canary record."""
    import torch

    from llmchain.artifacts import read_manifest
    from llmchain.data.canaries import canary_from_record, read_record
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    cfg = config or PrivacyAuditConfig()
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    rec = read_record(data_dir)
    model = load_model(model_dir, device=cfg.device)
    tok = load_tokenizer(model_dir)
    torch.manual_seed(cfg.seed)
    split = ((read_manifest(shards_dir) or {}).get("config") or {}) if shards_dir else {}
    val_fraction, split_by = split.get("val_fraction"), split.get("split_by")
    in_train = _copies_in_train(rec, data_dir, val_fraction, split_by)
    rng = np.random.default_rng([cfg.seed, 0xE4])
    rows = []
    for row in rec["canaries"]:
        c = canary_from_record(row)
        ex = exposure(model, tok, c, cfg, rng)
        got = extract(model, tok, c)
        rows.append(
            {
                "id": c.id,
                "language": c.language,
                "copies": c.copies,
                "kept": row.get("kept", 0),
                "in_train": in_train.get(c.id) if in_train else None,
                **ex,
                **got,
            }
        )
    skip = {p["id"] for row in rec["canaries"] for p in row["placements"]}
    mi = (
        membership_inference(model, tok, data_dir, float(val_fraction), str(split_by), skip, cfg)
        if val_fraction is not None and split_by
        else {"auc": None, "reason": "no shards dir: train/held-out unknown"}
    )
    groups = []
    for copies in sorted({r["copies"] for r in rows}):
        g = [r for r in rows if r["copies"] == copies]
        groups.append(
            {
                "name": f"planted {copies}×" if copies else "never planted (controls)",
                "copies planted": copies,
                "canaries": len(g),
                "copies kept (mean)": float(np.mean([r["kept"] for r in g])),
                "copies in train (mean)": float(np.mean([r["in_train"] for r in g])) if in_train else None,
                "exposure mean (bits)": float(np.mean([r["exposure"] for r in g])),
                "exposure max (bits)": float(np.max([r["exposure"] for r in g])),
                "extracted": sum(r["extracted"] for r in g),
            }
        )
    space = int(rec.get("space_size") or rows[0]["space"]) if rows else 0
    method = (
        "exact rank" if space <= cfg.exact_max else f"skew-normal fit to {cfg.samples:,} sampled candidates"
    )
    notes = []
    if space:
        notes.append(
            f"exposure = log2|R| − log2 rank, |R| = {space:,} secrets (max {math.log2(space):.1f} bits) — {method}"
            "; an unseen secret scores about 1.44 bits on average"
        )
    if mi.get("auc") is not None:
        notes.append(
            f"membership inference (loss threshold): AUC {mi['auc']:.3f} on {mi['train_chunks']} train vs "
            f"{mi['heldout_chunks']} held-out chunks of {mi['chunk_tokens']} tokens (0.5 = no leak)"
        )
    else:
        notes.append(f"membership inference: not measured ({mi.get('reason')})")
    dedup = [s for s in (read_manifest(data_dir) or {}).get("config", {}).get("steps", []) if "dedup" in s]
    notes.append(f"dedup steps of the data run: {', '.join(dedup) if dedup else 'none'}")
    cols = [
        "canaries",
        "copies kept (mean)",
        "copies in train (mean)",
        "exposure mean (bits)",
        "exposure max (bits)",
        "extracted",
    ]
    return {
        "kind": "eval-privacy",
        "task": "privacy audit (canary exposure)",
        "model": str(model_dir.resolve()),
        "data": str(data_dir.resolve()),
        "shards": str(Path(shards_dir).resolve()) if shards_dir else None,
        "n": len(rows),
        "columns": cols,
        "systems": groups,
        "canaries": rows,
        "membership_inference": mi,
        "dedup_steps": dedup,
        "notes": notes,
        "config": cfg.model_dump(mode="json"),
    }


def resolve_run(run: str | Path) -> tuple[Path, Path, Path | None]:
    """(model dir, documents dir, shards dir) of a run dir, a model dir, or a recipe dir holding one run."""
    from llmchain.eval.chain import kind_of, trace

    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such directory (give a run dir, a model dir or a recipe's run dir)")
    if kind_of(run) not in ("run", "model"):
        runs = sorted(p.parent for p in run.glob("*/metrics.jsonl"))
        if len(runs) != 1:
            raise UserError(f"{run}: found {len(runs)} training runs below it; give one run or model dir")
        run = runs[0]
    chain = trace(run)
    if chain.model is None:
        raise UserError(f"{run}: no model (final/ or a checkpoint) in this run")
    if chain.documents is None:
        raise UserError(f"{run}: cannot trace the model back to its documents dir (needed for canaries.json)")
    return chain.model, chain.documents, chain.shards


def run_audit(
    out_dir: str | Path,
    model_dir: str | Path,
    data_dir: str | Path,
    shards_dir: str | Path | None = None,
    config: PrivacyAuditConfig | None = None,
) -> tuple[dict[str, Any], Path]:
    """`audit(...)` + OUT/report.json, the exposure plot and manifest.json (written atomically)."""
    from llmchain.eval import plots
    from llmchain.eval.io import write_report

    report = audit(model_dir, data_dir, shards_dir, config)
    space = max((r["space"] for r in report["canaries"]), default=0)
    inputs = {"model": model_dir, "documents": data_dir, "shards": shards_dir}
    return report, write_report(
        out_dir, report, inputs, lambda tmp: [plots.exposure(tmp / PLOT, report["canaries"], space)]
    )


def summary_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: exposure and extraction per copy count, and the membership-inference AUC."""
    cols = report["columns"]
    lines = ["| group | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for g in report["systems"]:
        lines.append(f"| {g['name']} | " + " | ".join(_fmt(g.get(c)) for c in cols) + " |")
    return lines + [""] + report["notes"]


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------ recipe stage


def run_privacy_audit_stage(ctx: Any) -> dict[str, Any]:
    """Recipe stage `privacy_audit`: inputs model, documents (the data stage), optional shards (pack)."""
    cfg = PrivacyAuditConfig.model_validate(ctx.config)
    shards = ctx.inputs.get("shards")
    report, _ = run_audit(
        ctx.out_dir, ctx.inputs["model"], ctx.inputs["documents"], str(shards) if shards else None, cfg
    )
    out = {f"exposure@{g['copies planted']}": round(g["exposure mean (bits)"], 2) for g in report["systems"]}
    if report["membership_inference"].get("auc") is not None:
        out["MI AUC"] = round(report["membership_inference"]["auc"], 3)
    return out


def check_stage_config(config: dict[str, Any]) -> dict[str, Any]:
    """A recipe's `privacy_audit` config, validated before anything runs (ConfigError naming the field)."""
    from pydantic import ValidationError

    from llmchain.config import format_validation_error
    from llmchain.errors import ConfigError

    try:
        return PrivacyAuditConfig.model_validate(config).model_dump(mode="json")  # with defaults: hashed
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "config")) from None
