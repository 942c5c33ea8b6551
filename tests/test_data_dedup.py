"""Exact and near-duplicate removal: planted duplicates of real paragraphs are found, first copy kept."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from llmchain.data.dedup import ExactDedup, NearDedup, connected_min_labels, shingle_hashes
from llmchain.data.steps import Document
from llmchain.data.text import is_cjk, words


def _real_paragraphs(shared_data) -> list[str]:
    """Distinct real paragraphs of ≥ 50 words (what reaches dedup after the Gopher filter), English
    and Chinese, with the corpus's own near-duplicates taken out so only planted copies are duplicates."""
    texts: list[str] = []
    with open(shared_data / "csl_zh_title_summarization" / "dev.tsv", encoding="utf-8") as f:
        texts += [r["abstract"] for r in csv.DictReader(f, delimiter="\t")]
    gold = json.loads((shared_data / "web_html_articles" / "ground-truth.json").read_text(encoding="utf-8"))
    texts += [p for v in gold.values() for p in v["articleBody"].split("\n")]
    texts += (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    texts += [r["output"] for r in json.loads((shared_data / "alpaca_1k" / "alpaca_data_1k.json").read_text("utf-8"))]
    texts += (shared_data / "zh_classical" / "hongloumeng_ch01-20.txt").read_text(encoding="utf-8").splitlines()
    texts = [t.strip() for t in dict.fromkeys(texts) if len(words(t)) >= 50]
    probe = NearDedup(ngram=3, bands=32, rows=3)  # very permissive: drop anything resembling another text
    sigs = np.stack([probe.signature(Document("", t, "", {})) for t in texts])
    keep = probe.select(sigs, np.ones(len(texts), dtype=bool)) < 0
    return [t for t, k in zip(texts, keep, strict=False) if k]


def _perturb(text: str, rng: random.Random, frac: float = 0.05) -> str:
    """Change ~`frac` of the words at random positions (characters for Chinese)."""
    if is_cjk(text):
        chars = list(text)
        for i in rng.sample(range(len(chars)), max(1, round(frac * len(chars)))):
            chars[i] = chr(0x4E00 + rng.randrange(20000))
        return "".join(chars)
    toks = text.split(" ")
    vocab = ["the", "market", "said", "new", "people", "data", "year", "will", "very", "often"]
    for i in rng.sample(range(len(toks)), max(1, round(frac * len(toks)))):
        toks[i] = rng.choice(vocab)
    return " ".join(toks)


@pytest.fixture(scope="module")
def planted(shared_data):
    base = _real_paragraphs(shared_data)
    rng = random.Random(0)
    picks = rng.sample(range(len(base)), 600)
    copies = [base[i] if k % 4 == 0 else _perturb(base[i], rng) for k, i in enumerate(picks)]
    docs = [Document(str(i), t, "t", {}) for i, t in enumerate(base + copies)]
    return docs, set(range(len(base), len(docs)))


def test_default_settings_find_planted_near_duplicates(planted):
    docs, truth = planted
    assert len(docs) > 3500 and any(is_cjk(d.text) for d in docs)
    exact, near = ExactDedup(), NearDedup()  # the defaults
    alive = np.ones(len(docs), dtype=bool)
    ex = exact.select(np.array([exact.signature(d) for d in docs], dtype=np.uint64), alive)
    alive &= ex < 0
    nd = near.select(np.stack([near.signature(d) for d in docs]), alive)
    removed = set(np.flatnonzero((ex >= 0) | (nd >= 0)).tolist())
    found = len(removed & truth)
    recall, precision = found / len(truth), found / max(1, len(removed))
    assert recall >= 0.9 and precision >= 0.95, (recall, precision)
    # the first occurrence is the one kept: every removed planted copy points at an original
    assert all((nd[i] if nd[i] >= 0 else ex[i]) < min(truth) for i in removed & truth)


def test_exact_jaccard_check_removes_false_candidates(planted):
    docs, truth = planted
    near = NearDedup(verify_jaccard=True, jaccard_threshold=0.4)
    kept = near.select_in_memory(docs)
    removed = {i for i, (k, _) in enumerate(kept) if not k}
    assert len(removed & truth) / len(truth) >= 0.9 and removed <= truth


def test_exact_dedup_keeps_first_occurrence():
    texts = ["Hello  World", "something else", "hello world", "HELLO\nworld", "more"]
    dup_of = ExactDedup().select(
        np.array([ExactDedup().signature(Document("", t, "", {})) for t in texts], dtype=np.uint64),
        np.ones(5, dtype=bool),
    )
    assert dup_of.tolist() == [-1, -1, 0, 0, -1]


def test_minhash_estimates_jaccard_like_datasketch(planted):
    """Our multiply-shift MinHash estimates Jaccard as well as datasketch's MinHash does."""
    from datasketch import MinHash

    docs, truth = planted
    near = NearDedup()
    rng = random.Random(1)
    pairs = [(docs[i].text, _perturb(docs[i].text, rng, frac)) for i, frac in zip(range(0, 400, 5), [0.02, 0.05, 0.1, 0.2] * 20, strict=False)]
    ours_err, ds_err = [], []
    for a_text, b_text in pairs:
        a, b = shingle_hashes(a_text, 5), shingle_hashes(b_text, 5)
        true = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        ours_err.append(float(np.mean(near.minhash(a) == near.minhash(b))) - true)
        ma, mb = (MinHash(num_perm=near.num_perm, seed=1) for _ in range(2))
        ma.update_batch([x.to_bytes(8, "little") for x in a.tolist()])
        mb.update_batch([x.to_bytes(8, "little") for x in b.tolist()])
        ds_err.append(ma.jaccard(mb) - true)
    assert abs(np.mean(ours_err)) < 0.02  # unbiased
    assert np.sqrt(np.mean(np.square(ours_err))) < 1.3 * np.sqrt(np.mean(np.square(ds_err))) + 0.01


def test_chinese_is_shingled_by_characters():
    assert len(shingle_hashes("我爱北京天安门广场", 5)) == 5  # 9 characters → 5 character 5-grams
    near = NearDedup()
    text = "水运工程项目作为我国航运和水利的重要组成部分其重要性不言而喻针对现阶段水运工程项目建设和运行过程中存在的问题"
    docs = [Document(str(i), t, "", {}) for i, t in enumerate([text, text.replace("重要", "关键", 1), "完全不同的另一段中文文字内容" * 3])]
    assert [k for k, _ in near.select_in_memory(docs)] == [True, False, True]


def test_connected_components_label_with_smallest_index():
    labels = connected_min_labels(7, np.array([6, 3, 5, 1]), np.array([3, 1, 4, 0]))
    assert labels.tolist() == [0, 0, 2, 0, 4, 4, 0]
