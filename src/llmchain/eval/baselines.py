"""The classical baselines every model is measured beside.

- language modelling: a smoothed n-gram model on UTF-8 bytes (`ngram_bits_per_byte`, see ngram.py);
- text classification: Multinomial Naive Bayes on word (or Chinese character) 1-2-gram counts, and
  TF-IDF + logistic regression on the same features (`fit_text_classifiers`);
- generation: the lead of the prompt cut to the typical reference length, and the reference of the
  nearest training prompt by TF-IDF cosine (`lead_baseline`, `nearest_reference_baseline`).

They set the floor: a neural model that cannot beat them has bought nothing yet.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from llmchain.errors import UserError
from llmchain.eval.ngram import NgramLM

# Separator symbol between documents in a byte stream (the byte vocabulary is 0..255): like the EOS
# token of a model it is predicted (its bits count) but it is not a byte of the text.
DOC_SEP = 256

_CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
    "\U00020000-\U0002a6df\u3000-\u303f\uff00-\uffef"
)
TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+", re.UNICODE)
_CJK_RE = re.compile(rf"[{_CJK}]")


def cjk_fraction(texts: Iterable[str], sample: int = 2000) -> float:
    """Share of non-space characters that are CJK, over the first `sample` texts."""
    cjk = total = 0
    for i, t in enumerate(texts):
        if i >= sample:
            break
        total += sum(1 for ch in t if not ch.isspace())
        cjk += len(_CJK_RE.findall(t))
    return cjk / total if total else 0.0


def text_tokens(text: str, zh: str = "char") -> list[str]:
    """Lower-cased words, with every CJK character its own token (`zh="char"`) or jieba words (`"jieba"`).

    This is what ROUGE and the classical classifiers see, so Chinese text is never one giant "word".
    """
    text = text.lower()
    if zh == "jieba" and _CJK_RE.search(text):
        import jieba

        jieba.setLogLevel(60)  # its "Building prefix dict" chatter goes to stderr otherwise
        out: list[str] = []
        for piece in jieba.cut(text):
            if _CJK_RE.search(piece):
                if re.search(r"\w", piece):  # a Chinese word (punctuation pieces are dropped)
                    out.append(piece)
            else:
                out.extend(re.findall(r"\w+", piece))
        return out
    return TOKEN_RE.findall(text)


class Analyzer:
    """sklearn analyzer: `text_tokens` then word n-grams 1..n (a class, so pipelines can be pickled)."""

    def __init__(self, zh: str = "char", ngram: int = 2):
        self.zh, self.ngram = zh, ngram

    def __call__(self, text: str) -> list[str]:
        toks = text_tokens(text, self.zh)
        grams = list(toks)
        for n in range(2, self.ngram + 1):
            grams.extend(" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
        return grams


# --- language modelling ----------------------------------------------------------------------


def byte_stream(docs: Iterable[str | bytes]) -> tuple[np.ndarray, int]:
    """UTF-8 bytes of `docs` joined by DOC_SEP; returns (stream of int64 symbols, number of text bytes)."""
    parts: list[np.ndarray] = []
    n_bytes = 0
    sep = np.array([DOC_SEP], dtype=np.int64)
    for d in docs:
        b = d.encode("utf-8") if isinstance(d, str) else bytes(d)
        if parts:
            parts.append(sep)
        parts.append(np.frombuffer(b, dtype=np.uint8).astype(np.int64))
        n_bytes += len(b)
    if not parts:
        return np.zeros(0, dtype=np.int64), 0
    return np.concatenate(parts), n_bytes


def ngram_bits_per_byte(
    train_docs: Iterable[str | bytes],
    eval_docs: Iterable[str | bytes],
    order: int = 5,
    discount: float | None = None,
    symbol_bits: bool = False,
) -> dict[str, Any]:
    """Fit a byte-level modified Kneser-Ney n-gram model on `train_docs` and score `eval_docs`.

    Returns {name, order, smoothing, bits_per_byte, bits_per_symbol, bits, bytes, symbols,
    train_bytes, fit_seconds, score_seconds} (+ "symbol_bits", the bits of every eval symbol in order, with
    `symbol_bits`: what per-window bootstrap intervals sum). Document separators are predicted (like a model's
    EOS) but are not bytes, so bits_per_byte = all bits / UTF-8 bytes of the eval text.
    Raises UserError when either side is empty.
    """
    train, train_bytes = byte_stream(train_docs)
    evals, eval_bytes = byte_stream(eval_docs)
    if train_bytes == 0:
        raise UserError("the n-gram baseline's training text is empty")
    if eval_bytes == 0:
        raise UserError("the evaluation text is empty")
    t0 = time.perf_counter()
    lm = NgramLM(order=order, vocab_size=DOC_SEP + 1, discount=discount).fit(train)
    t1 = time.perf_counter()
    bits = lm.bits(evals)
    t2 = time.perf_counter()
    total = float(bits.sum())
    extra = {"symbol_bits": bits} if symbol_bits else {}
    return {
        "name": f"{order}-gram (bytes)",
        "order": order,
        "smoothing": "interpolated modified Kneser-Ney" if discount is None else f"interpolated KN, D={discount}",
        "bits_per_byte": total / eval_bytes,
        "bits_per_symbol": total / evals.size,
        "bits": total,
        "bytes": eval_bytes,
        "symbols": int(evals.size),
        "train_bytes": train_bytes,
        "fit_seconds": t1 - t0,
        "score_seconds": t2 - t1,
        **extra,
    }


# --- text classification ---------------------------------------------------------------------


def choose_zh_mode(texts: Sequence[str], zh: str = "auto") -> str:
    """"char" or "jieba": how CJK text is split ("auto" → characters, the robust default)."""
    if zh not in ("auto", "char", "jieba"):
        raise UserError(f"--zh must be auto, char or jieba, got {zh!r}")
    return "char" if zh == "auto" else zh


def fit_text_classifiers(
    texts: Sequence[str], labels: Sequence[str], zh: str = "auto", seed: int = 0
) -> dict[str, Any]:
    """Fit the classical classifiers on (texts, labels); returns {name: fitted sklearn pipeline}.

    - "naive_bayes": MultinomialNB (alpha=1) on 1-2-gram counts;
    - "tfidf_logreg": LogisticRegression (C=4, saga: 10x faster than lbfgs here, same accuracy) on
      sublinear TF-IDF of 1-2-grams.
    Raises UserError with fewer than 2 distinct labels.
    """
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    if len(set(labels)) < 2:
        raise UserError("the training file has fewer than 2 distinct labels; nothing to classify")
    mode = choose_zh_mode(texts, zh)
    nb = make_pipeline(CountVectorizer(analyzer=Analyzer(mode, 2)), MultinomialNB(alpha=1.0))
    lr = make_pipeline(
        TfidfVectorizer(analyzer=Analyzer(mode, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(C=4.0, solver="saga", max_iter=1000, random_state=seed),
    )
    out = {}
    for name, pipe in (("naive_bayes", nb), ("tfidf_logreg", lr)):
        pipe.fit(list(texts), list(labels))
        out[name] = pipe
    return out


BASELINE_TITLES = {
    "naive_bayes": "Naive Bayes (1-2-gram counts)",
    "tfidf_logreg": "TF-IDF + logistic regression",
    "lead": "lead of the prompt",
    "nearest": "nearest training reference (TF-IDF)",
}


# --- generation --------------------------------------------------------------------------------


def lead_baseline(prompts: Sequence[str], length: int, zh: str = "char") -> list[str]:
    """The first `length` tokens of each prompt (words; CJK characters count one each), as text."""
    out = []
    for p in prompts:
        # keep the prompt's own characters: cut at the end of the length-th token
        ends = [m.end() for m in TOKEN_RE.finditer(p)]
        out.append(p[: ends[length - 1]] if len(ends) >= length else p)
    return out


def nearest_reference_baseline(
    train_prompts: Sequence[str], train_references: Sequence[str], prompts: Sequence[str], zh: str = "char"
) -> list[str]:
    """For each prompt, the reference of the most similar training prompt (TF-IDF 1-2-gram cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not train_prompts:
        raise UserError("the nearest-reference baseline needs a non-empty --train file")
    vec = TfidfVectorizer(analyzer=Analyzer(zh, 2), sublinear_tf=True)
    a = vec.fit_transform(list(train_prompts))
    b = vec.transform(list(prompts))
    best: list[int] = []
    for start in range(0, b.shape[0], 512):  # chunks keep the dense similarity block small
        sims = (b[start : start + 512] @ a.T).toarray()
        best.extend(np.argmax(sims, axis=1).tolist())
    return [train_references[i] for i in best]
