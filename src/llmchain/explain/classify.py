"""Token attributions for text classifiers (ours and HF encoders): layer integrated gradients on the
word embeddings (Captum), leave-one-token-out occlusion as a model-free check, and ERASER's
faithfulness measures (comprehensiveness, sufficiency) to compare them with random scores.

IG and occlusion explain the log-odds of one target class (default: the predicted one),
log p − log(1 − p): unlike the probability it does not saturate, so a confident prediction still
gets attributions (on a probability near 1 both methods see nothing move). The faithfulness
measures work on the probability, as ERASER defines them. Special
tokens ([CLS], [SEP], BOS) are never attributed, removed or kept selectively: they stay in every
variant of the input, so a removal changes only the text's own tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from llmchain.errors import UserError

ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)  # fractions of the tokens removed / kept (DeYoung et al. 2020)


@dataclass
class Tokens:
    """A text as the classifier sees it: ids, which are special, and each token's character span."""

    text: str
    ids: list[int]
    special: list[bool]
    spans: list[tuple[int, int]]  # (start, end) in `text`; (0, 0) for special tokens
    truncated_from: int | None = None  # the untruncated token count, when the text was cut

    @property
    def content(self) -> list[int]:
        return [i for i, s in enumerate(self.special) if not s]


@dataclass
class Explanation:
    """Per-token scores of one text for one target label, by method; plus what the model said."""

    tokens: Tokens
    label: str
    target: int
    prob: float
    scores: dict[str, list[float]] = field(default_factory=dict)  # method → one score per token (0 on specials)
    ig_delta: float | None = None  # Captum's convergence delta (completeness gap), log-odds units
    ig_total: float | None = None  # log-odds(text) − log-odds(baseline): what IG's attributions add up to
    ig_steps: int | None = None
    faithfulness: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        t = self.tokens
        return {
            "text": t.text, "label": self.label, "probability": round(self.prob, 6),
            "truncated": t.truncated_from is not None, "tokens_total": t.truncated_from or len(t.ids),
            "tokens": [{"token": t.text[a:b] if not s else None, "id": i, "special": s, "span": [a, b],
                        **{m: round(v[k], 6) for m, v in self.scores.items()}}
                       for k, (i, s, (a, b)) in enumerate(zip(t.ids, t.special, t.spans, strict=True))],
            "ig_convergence_delta": self.ig_delta, "ig_expected_total": self.ig_total, "ig_steps": self.ig_steps,
            "faithfulness": self.faithfulness,
        }  # fmt: skip


def tokenize(clf, text: str) -> Tokens:
    """`text` tokenized as `clf.encode` does (truncated to its max length), with character spans.

    UserError for an empty text."""
    if not text or not text.strip():
        raise UserError("the text is empty; nothing to explain")
    tok = clf.tokenizer
    enc = tok(text, truncation=True, max_length=clf.max_length, return_offsets_mapping=True,
              return_special_tokens_mask=True)  # fmt: skip
    full = len(tok(text, truncation=False)["input_ids"])
    special = [bool(s) for s in enc["special_tokens_mask"]]
    spans = [(0, 0) if s else (int(a), int(b)) for s, (a, b) in zip(special, enc["offset_mapping"], strict=True)]
    return Tokens(text, list(enc["input_ids"]), special, spans,
                  truncated_from=full if full > len(enc["input_ids"]) else None)  # fmt: skip


def _embedding_layer(model) -> torch.nn.Module:
    from llmchain.model.classifier import DecoderClassifier

    return model.model.embed_tokens if isinstance(model, DecoderClassifier) else model.get_input_embeddings()


def log_odds(logits: torch.Tensor) -> torch.Tensor:
    """Per class k: log p_k − log(1 − p_k) = logit_k − logsumexp of the other logits. (B, K) → (B, K)."""
    k = logits.shape[-1]
    others = logits[..., None, :].expand(*logits.shape, k).masked_fill(torch.eye(k, dtype=torch.bool,
                                                                                 device=logits.device), -torch.inf)
    return logits - others.logsumexp(-1)


def class_scores(clf, seqs: list[list[int]], batch_size: int = 64, kind: str = "prob") -> torch.Tensor:
    """Class probabilities (or log-odds) (N, K) of token-id sequences (tokenized, specials included)."""
    from llmchain.model.classifier import classifier_logits, pad_batch

    out = []
    with torch.inference_mode():
        for s in range(0, len(seqs), batch_size):
            x, mask = pad_batch([q or [clf.pad_id] for q in seqs[s : s + batch_size]], clf.pad_id)
            logits = classifier_logits(clf.model, x.to(clf.device), mask.to(clf.device)).float()
            out.append((logits.softmax(-1) if kind == "prob" else log_odds(logits)).cpu())
    return torch.cat(out)


def class_probs(clf, seqs: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    return class_scores(clf, seqs, batch_size, "prob")


def resolve_target(clf, label: str | None, probs: torch.Tensor) -> int:
    if label is None:
        return int(probs.argmax())
    if label not in clf.labels:
        raise UserError(f"--label {label!r}: not a label of this classifier (labels: {', '.join(clf.labels)})")
    return clf.labels.index(label)


def integrated_gradients(clf, t: Tokens, target: int, n_steps: int = 50) -> tuple[list[float], float]:
    """Layer IG on the word embeddings from a baseline of pad tokens (specials kept); the
    attribution of a token is its embedding attribution summed over the hidden size. Returns the
    scores and Captum's convergence delta (|sum of attributions − the change they explain|)."""
    from captum.attr import LayerIntegratedGradients

    from llmchain.model.classifier import classifier_logits

    def forward(ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)
        return log_odds(classifier_logits(clf.model, ids, mask).float())

    ids = torch.tensor([t.ids], device=clf.device)
    base = torch.tensor([[i if s else clf.pad_id for i, s in zip(t.ids, t.special, strict=True)]], device=clf.device)
    lig = LayerIntegratedGradients(forward, _embedding_layer(clf.model))
    with torch.enable_grad():
        attr, delta = lig.attribute(ids, baselines=base, target=target, n_steps=n_steps,
                                    internal_batch_size=min(n_steps, 64), return_convergence_delta=True)  # fmt: skip
    scores = attr.sum(-1)[0].detach().cpu().tolist()
    return [0.0 if s else v for v, s in zip(scores, t.special, strict=True)], float(delta.abs().item())


def converged_ig(clf, t: Tokens, target: int, total: float, n_steps: int = 50, max_steps: int = 800,
                 tol: float = 0.01) -> tuple[list[float], float, int]:  # fmt: skip
    """IG with the steps doubled until the convergence delta is within `tol` of the total change
    (or 1e-4 absolute), up to `max_steps`: a model whose output jumps along the path (seen on small
    over-confident encoders) needs hundreds of steps where a smooth one is done in 50."""
    while True:
        scores, delta = integrated_gradients(clf, t, target, n_steps)
        if delta <= max(tol * abs(total), 1e-4) or n_steps * 2 > max_steps:
            return scores, delta, n_steps
        n_steps *= 2


def occlusion(clf, t: Tokens, target: int) -> list[float]:
    """Leave-one-token-out: log-odds(target | text) − log-odds(target | text without that token)."""
    content = t.content
    variants = [t.ids] + [[i for k, i in enumerate(t.ids) if k != drop] for drop in content]
    lo = class_scores(clf, variants, kind="log_odds")[:, target].tolist()
    scores = [0.0] * len(t.ids)
    for k, v in zip(content, lo[1:], strict=True):
        scores[k] = lo[0] - v
    return scores


def random_scores(t: Tokens, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(len(t.ids), generator=g).tolist()
    return [0.0 if s else v for v, s in zip(r, t.special, strict=True)]


def faithfulness(clf, t: Tokens, target: int, p_full: float, scores: list[float],
                 bins: tuple[float, ...] = ERASER_BINS) -> dict[str, float]:  # fmt: skip
    """ERASER's comprehensiveness (p drop when the top-k% tokens are removed; higher is more
    faithful) and sufficiency (p drop when only they are kept; lower is more faithful), each
    averaged over the bins (AOPC, as ferret). k = ⌈fraction · tokens⌉, at least one token."""
    content = t.content
    if not content:
        return {"comprehensiveness": 0.0, "sufficiency": 0.0}
    ranked = sorted(content, key=lambda k: -scores[k])
    variants = []
    for q in bins:
        top = set(ranked[: max(1, math.ceil(q * len(content)))])
        variants.append([i for k, i in enumerate(t.ids) if k not in top])  # removed
        variants.append([i for k, i in enumerate(t.ids) if t.special[k] or k in top])  # only they kept
    p = class_probs(clf, variants)[:, target].tolist()
    comp = sum(p_full - p[2 * j] for j in range(len(bins))) / len(bins)
    suff = sum(p_full - p[2 * j + 1] for j in range(len(bins))) / len(bins)
    return {"comprehensiveness": comp, "sufficiency": suff}


def explain_text(clf, text: str, *, label: str | None = None, methods: tuple[str, ...] = ("ig", "occlusion"),
                 n_steps: int = 50, measure: bool = False, seed: int = 0) -> Explanation:  # fmt: skip
    """Explain one text: scores per method; with `measure`, each method's faithfulness next to random's."""
    t = tokenize(clf, text)
    probs = class_probs(clf, [t.ids])[0]
    target = resolve_target(clf, label, probs)
    p_full = float(probs[target])
    ex = Explanation(t, clf.labels[target], target, p_full)
    for m in methods:
        if m == "ig":
            base = [i if s else clf.pad_id for i, s in zip(t.ids, t.special, strict=True)]
            lo = class_scores(clf, [t.ids, base], kind="log_odds")[:, target]
            ex.ig_total = float(lo[0] - lo[1])
            ex.scores["ig"], ex.ig_delta, ex.ig_steps = converged_ig(clf, t, target, ex.ig_total, n_steps)
        elif m == "occlusion":
            ex.scores["occlusion"] = occlusion(clf, t, target)
        elif m == "random":
            ex.scores["random"] = random_scores(t, seed)
        else:
            raise UserError(f"--method {m!r}: expected ig, occlusion or random")
    if measure:
        scored = dict(ex.scores)
        scored.setdefault("random", random_scores(t, seed))
        ex.faithfulness = {m: faithfulness(clf, t, target, p_full, s) for m, s in scored.items()}
    return ex


def baseline_word_weights(pipe, text: str, label: str) -> list[tuple[str, float]]:
    """The TF-IDF+LR baseline's view of `text`: each of its n-grams' contribution to `label`'s
    score (TF-IDF value × the class's coefficient), largest magnitude first."""
    vec, lr = pipe.steps[0][1], pipe.steps[-1][1]
    x = vec.transform([text])
    classes = [str(c) for c in lr.classes_]
    if label not in classes:
        return []
    coef = lr.coef_[0] * (1 if classes.index(label) == 1 else -1) if len(classes) == 2 else \
        lr.coef_[classes.index(label)]  # fmt: skip
    names = vec.get_feature_names_out()
    row = x.tocoo()
    pairs = [(str(names[j]), float(v * coef[j])) for j, v in zip(row.col, row.data, strict=True)]
    return sorted(pairs, key=lambda p: -abs(p[1]))
