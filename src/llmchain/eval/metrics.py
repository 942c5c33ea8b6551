"""Metrics: classification (accuracy, per-class and macro precision/recall/F1, confusion matrix) and
generation (BLEU and chrF through sacrebleu, ROUGE-1/2/L through rouge-score, exact match).

All functions take plain lists and return plain dicts of floats, ready for `report.json`. Scores
are percentages (0-100) for the generation metrics, as sacrebleu prints them; fractions (0-1) for
classification, as scikit-learn returns them.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

from llmchain.errors import UserError
from llmchain.eval.baselines import cjk_fraction, text_tokens

# --- classification ----------------------------------------------------------------------------


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro P/R/F1, per-class P/R/F1/support and the confusion matrix.

    `labels` fixes the row/column order (default: sorted union of both sides). confusion[i][j] counts
    items of true label i predicted as j. A class never predicted has precision 0 (as sklearn with
    zero_division=0). Raises UserError when the lists differ in length or are empty.
    """
    if len(y_true) != len(y_pred):
        raise UserError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        raise UserError("no examples to score")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    conf = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        if t not in index or p not in index:
            raise UserError(f"label {t if t not in index else p!r} is not among the labels {labels}")
        conf[index[t]][index[p]] += 1
    per_class = {}
    for i, lab in enumerate(labels):
        tp = conf[i][i]
        predicted = sum(conf[r][i] for r in range(k))
        support = sum(conf[i])
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": support}
    present = [lab for lab in labels if per_class[lab]["support"] > 0]  # macro over classes in the data
    macro = {m: sum(per_class[lab][m] for lab in present) / len(present) for m in ("precision", "recall", "f1")}
    return {
        "accuracy": sum(conf[i][i] for i in range(k)) / len(y_true),
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "per_class": per_class,
        "labels": labels,
        "confusion": conf,
        "n": len(y_true),
    }


# --- generation --------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation for exact match: NFKC, lower case, no punctuation, no English articles,
    single spaces; spaces between CJK characters are removed (they carry no meaning there)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = " ".join(text.split())
    return re.sub(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])", "", text)


class _RougeTokenizer:
    """rouge-score tokenizer that keeps non-Latin text: CJK characters are tokens, words are lower-cased.

    (rouge-score's default tokenizer drops every non [a-z0-9] character, which scores Chinese as 0.)
    """

    def __init__(self, zh: str = "char"):
        self.zh = zh

    def tokenize(self, text: str) -> list[str]:
        return text_tokens(text, self.zh)


def bleu_tokenize_for(references: Sequence[str]) -> str:
    """sacrebleu tokenizer for the target language: "zh" for Chinese/Japanese-heavy text, else "13a"."""
    return "zh" if cjk_fraction(references) > 0.3 else "13a"


def generation_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bleu_tokenize: str | None = None,
    zh: str = "char",
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu), mean ROUGE-1/2/L F1 (best reference per item), exact match.

    Chinese references (and `zh="char"`) also get rouge1_words/rouge2_words/rougeL_words: ROUGE over
    jieba words beside the one over characters.

    `references[i]` lists the reference(s) of item i (any number ≥ 1). `bleu_tokenize` defaults to
    "zh" for Chinese references, else sacrebleu's "13a" — the same as `sacrebleu REF -i HYP`.
    Returns percentages plus the sacrebleu signatures and `ci`: {metric: [low, high]}, the 95 % bootstrap
    interval of each metric over `resamples` resamples of the items (`llmchain.eval.bootstrap`; 0: none).
    Raises UserError on length mismatch.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    from llmchain.eval.bootstrap import corpus_interval, mean_intervals

    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} reference sets")
    if not predictions:
        raise UserError("no examples to score")
    for i, refs in enumerate(references):
        if not refs:
            raise UserError(f"item {i + 1} has no reference")
    first_refs = [r[0] for r in references]
    tok = bleu_tokenize or bleu_tokenize_for(first_refs)
    # sacrebleu wants one stream per reference position; a missing one repeats the first reference,
    # which leaves BLEU and chrF unchanged (both keep the best match per sentence).
    n_refs = max(len(r) for r in references)
    streams = [[r[j] if j < len(r) else r[0] for r in references] for j in range(n_refs)]
    bleu = sacrebleu.metrics.BLEU(tokenize=tok)
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(predictions), streams)
    c = chrf.corpus_score(list(predictions), streams)
    rouge = ["rouge1", "rouge2", "rougeL"]
    scorers = {"": rouge_scorer.RougeScorer(rouge, tokenizer=_RougeTokenizer(zh))}
    if zh == "char" and tok == "zh":
        # Chinese references: ROUGE over jieba words too, since papers report either; by characters
        # rewards getting single characters right, by words only whole words
        scorers["_words"] = rouge_scorer.RougeScorer(rouge, tokenizer=_RougeTokenizer("jieba"))
    items: dict[str, list[float]] = {k + suffix: [] for suffix in scorers for k in rouge}
    items["exact_match"] = []
    for pred, refs in zip(predictions, references, strict=True):
        for suffix, scorer in scorers.items():
            scores = scorer.score_multi(list(refs), pred)
            for key in rouge:
                items[key + suffix].append(100 * scores[key].fmeasure)
        norm = normalize_answer(pred)
        items["exact_match"].append(100.0 * any(norm == normalize_answer(r) for r in refs))
    n = len(predictions)
    ci = mean_intervals(items, resamples=resamples, seed=seed) if n > 1 else {}
    if ci:
        for key, metric in (("bleu", bleu), ("chrf", chrf)):
            ci[key] = corpus_interval(metric, predictions, streams, resamples=resamples, seed=seed)
    return {
        "bleu": b.score,
        "chrf": c.score,
        **{k: sum(v) / n for k, v in items.items()},
        "ci": ci,
        "n": n,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
