"""The classical baselines: Kneser-Ney n-gram LM (hand-computed case, a plain reference implementation,
normalisation, tinyshakespeare bits-per-byte) and the Chinese-aware tokens of the text baselines.
(Naive Bayes / TF-IDF+LR on SST-2 and Chinese reviews: test_eval_classify.py.)"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from llmchain.errors import UserError
from llmchain.eval.baselines import ngram_bits_per_byte, text_tokens
from llmchain.eval.ngram import NgramLM, _discounts


def test_ngram_hand_computed_bigram():
    # Interpolated KN, order 2, one fixed discount D = 0.5, symbols a=0 b=1 c=2 (V = 3).
    # train "a a b a b c": bigrams aa, ab, ba, ab, bc.
    # Unigram continuation counts (distinct left neighbours): a: {a, b} = 2, b: {a} = 1, c: {b} = 1;
    #   total 4, 3 types → P1(a) = (2-.5)/4 + (.5·3/4)·(1/3) = .5, P1(b) = P1(c) = .125 + .125 = .25
    # Bigrams after a: aa 1, ab 2 (d = 3, 2 types); after b: ba 1, bc 1 (d = 2, 2 types):
    #   P(b|a) = 1.5/3 + (.5·2/3)·.25 = .583333…   P(c|b) = .5/2 + (.5·2/2)·.25 = .375
    # "c" never has a successor in training → P(·|c) backs off to P1: P(c|c) = .25
    # eval "a b c c": bits = -log2(.5) - log2(7/12) - log2(.375) - log2(.25)
    lm = NgramLM(order=2, vocab_size=3, discount=0.5).fit(np.array([0, 0, 1, 0, 1, 2]))
    bits = lm.bits(np.array([0, 1, 2, 2]))
    expected = [1.0, -math.log2(7 / 12), -math.log2(0.375), 2.0]
    assert bits == pytest.approx(expected, abs=1e-12)
    assert lm.prob([0], 0) == pytest.approx(1 / 3)  # .5/3 + (1/3)·.5
    assert lm.prob([0], 2) == pytest.approx(1 / 12)  # unseen after a: only the back-off mass
    # bits per byte when each symbol is one byte
    assert bits.sum() / 4 == pytest.approx(sum(expected) / 4)


def _reference_bits(train: list[int], evals: list[int], order: int, vocab: int) -> list[float]:
    """Interpolated modified Kneser-Ney written the plain way (dicts, loops), to check the numpy one."""
    grams: list[dict[tuple, float]] = [defaultdict(float) for _ in range(order + 1)]
    for i in range(len(train)):
        for k in range(1, order + 1):
            if i - k + 1 >= 0:
                grams[k][tuple(train[i - k + 1 : i + 1])] += 1
    counts: list[dict[tuple, float]] = [dict() for _ in range(order + 1)]
    counts[order] = dict(grams[order])
    for k in range(1, order):  # continuation counts from the distinct (k+1)-grams
        cont: dict[tuple, float] = defaultdict(float)
        for g in grams[k + 1]:
            cont[g[1:]] += 1
        counts[k] = dict(cont)
    tables = []
    for k in range(1, order + 1):
        disc = _discounts(np.array(list(counts[k].values()), dtype=np.float64))
        denom: dict[tuple, float] = defaultdict(float)
        back: dict[tuple, float] = defaultdict(float)
        for g, c in counts[k].items():
            denom[g[:-1]] += c
            if c > 0:
                back[g[:-1]] += disc[min(int(c), 3)]
        tables.append((counts[k], denom, back, disc))
    out = []
    for i, w in enumerate(evals):
        p = 1.0 / vocab
        for k in range(1, min(order, i + 1) + 1):
            cnt, denom, back, disc = tables[k - 1]
            h = tuple(evals[i - k + 1 : i])
            d = denom.get(h, 0.0)
            if d == 0:
                continue
            c = cnt.get(h + (w,), 0.0)
            p = max(c - disc[min(int(c), 3)], 0.0) / d + back[h] / d * p
        out.append(-math.log2(p))
    return out


def test_ngram_matches_plain_reference_implementation(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    train, evals = list(text[:6000]), list(text[6000:6800])
    for order in (1, 3, 4):
        lm = NgramLM(order=order, vocab_size=256).fit(np.array(train))
        assert lm.bits(np.array(evals)) == pytest.approx(_reference_bits(train, evals, order, 256), rel=1e-9)


def test_ngram_distributions_sum_to_one(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:50_000]
    lm = NgramLM(order=4, vocab_size=256).fit(np.frombuffer(text, dtype=np.uint8))
    for ctx in (b"the", b"KIN", b"\x00\x01\x02", b"q"):  # seen, seen, never seen, short
        total = sum(lm.prob(list(ctx), w) for w in range(256))
        assert total == pytest.approx(1.0, abs=1e-9)


def test_ngram_tinyshakespeare_val_bits_per_byte(shared_data):
    # The standard split: first 90% of the characters train, the last 10% val (ASCII: chars = bytes).
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    r3 = ngram_bits_per_byte([text[:cut]], [text[cut:]], order=3)
    r5 = ngram_bits_per_byte([text[:cut]], [text[cut:]], order=5)
    assert r3["bytes"] == len(text) - cut == r3["symbols"]
    # measured 2.941 (order 3) and 2.253 (order 5); unigram entropy of English text is ~4.5-4.8
    assert 2.85 < r3["bits_per_byte"] < 3.05
    assert 2.15 < r5["bits_per_byte"] < 2.35
    # higher order, more context: better on this much text
    assert r5["bits_per_byte"] < r3["bits_per_byte"]


def test_ngram_document_separators_are_predicted_but_not_bytes():
    r = ngram_bits_per_byte(["abcabc", "abcabd"], ["abc", "abd"], order=2)
    assert r["bytes"] == 6 and r["symbols"] == 7  # two documents: one separator between them
    assert r["bits"] == pytest.approx(r["bits_per_byte"] * 6)


def test_ngram_errors():
    with pytest.raises(UserError):
        ngram_bits_per_byte([""], ["abc"])
    with pytest.raises(UserError):
        NgramLM(order=0)
    with pytest.raises(UserError):
        NgramLM(order=2, vocab_size=3).fit(np.array([0, 1, 5]))


def test_text_tokens_split_chinese_characters():
    assert text_tokens("今天天气很好, GPT-4 is GREAT!") == ["今", "天", "天", "气", "很", "好", "gpt", "4", "is", "great"]
    assert text_tokens("今天天气很好", zh="jieba") == ["今天天气", "很", "好"]  # jieba words
