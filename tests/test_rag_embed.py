"""The encoder gives what sentence-transformers gives for MiniLM, flags truncation; passages are
sentence- and CJK-aware spans of their text."""

from __future__ import annotations

import numpy as np
import pytest

from llmchain.rag.embed import Encoder
from llmchain.rag.passages import estimate_tokens, keyword_terms, split_passages


def test_minilm_vectors_match_sentence_transformers_mean_pooling():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from llmchain.train.classify import minilm_dir

    texts = ["A man is eating food.", "一个男人在吃饭。", "short", "The quick brown fox jumps over the lazy dog " * 3]
    enc = Encoder.load("minilm")
    ours = enc.encode(texts, batch_size=2).vectors
    ref = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        texts, convert_to_numpy=True, normalize_embeddings=False)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, ref, atol=2e-5)  # ST's modules end in Normalize: same unit vectors
    assert Encoder.load("minilm") is enc  # cached per process


def test_long_texts_are_cut_and_flagged():
    enc = Encoder.load("minilm")
    assert (enc.name, enc.dim, enc.max_tokens) == ("minilm", 384, 256)
    out = enc.encode(["word " * 400, "two words"])
    assert out.truncated == [True, False]
    assert out.n_tokens == [256, 4]  # [CLS] two words [SEP]


def test_a_dir_that_is_not_an_encoder_is_a_user_error(tmp_path):
    from llmchain.errors import UserError

    with pytest.raises(UserError, match="not a model directory"):
        Encoder.load(str(tmp_path))


def test_chinese_passages_split_at_chinese_stops_and_stay_short():
    sentence = "本文研究了活性染料在棉织物上的固色性能。"  # 20 characters
    text = sentence * 30 + "结论：效果很好！"
    spans = split_passages(text, max_tokens=100)
    assert len(spans) > 1
    assert "".join(text[a:b] for a, b in spans) == text  # nothing lost, nothing doubled
    for a, b in spans:
        assert b - a <= 100 and text[a:b].endswith(("。", "！"))


def test_english_passages_keep_sentences_whole_and_long_sentences_are_cut():
    text = "First sentence here. Second one follows!\n\nA third, in a new paragraph? " + "word " * 300
    spans = split_passages(text, max_tokens=40)
    pieces = [text[a:b] for a, b in spans]
    assert pieces[0] == "First sentence here. Second one follows!\n\nA third, in a new paragraph?"
    assert all(estimate_tokens(p) <= 40 for p in pieces)
    assert " ".join(pieces[1:]).split() == ["word"] * 300  # the long run is cut at word ends only


def test_ascii_full_stop_ends_a_chinese_sentence():
    text = "缺陷很多" * 30 + "." + "该染料最适合染色" * 20
    spans = split_passages(text, max_tokens=150)
    assert text[spans[0][0]:spans[0][1]].endswith(".")


def test_keyword_terms_segment_chinese_into_words_and_subwords():
    terms = keyword_terms("抗高血压药").split()
    assert "血压" in terms and "高血压" in terms
    assert keyword_terms("plain English stays") == "plain English stays"
