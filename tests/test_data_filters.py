"""Cleaning and quality filters: cases each must keep and must drop; Chinese is not wiped out."""

from __future__ import annotations

import csv

import pytest

from llmchain.config import DataConfig
from llmchain.data.clean import CleanText
from llmchain.data.filters import (
    C4LineFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    LengthFilter,
)
from llmchain.data.steps import Document, build_steps
from llmchain.data.text import words


def doc(text: str) -> Document:
    return Document("t", text, "test", {})


@pytest.fixture(scope="module")
def english_paragraphs(shared_data):
    """Real multi-sentence English paragraphs (Alpaca answers of 80+ words)."""
    import json

    rows = json.loads((shared_data / "alpaca_1k" / "alpaca_data_1k.json").read_text(encoding="utf-8"))
    return [r["output"] for r in rows if len(r["output"].split()) >= 80][:40]


def test_words_count_cjk_characters():
    assert words("我爱北京天安门。Hello, world!") == ["我", "爱", "北", "京", "天", "安", "门", "。", "Hello,", "world!"]
    assert words("我爱北京天安门", segmenter="jieba")[:2] == ["我", "爱"]


def test_clean_repairs_mojibake_controls_and_whitespace():
    c = CleanText()
    assert c.clean("The Mona Lisa doesnâ€™t have eyebrows.") == "The Mona Lisa doesn’t have eyebrows."
    assert c.clean("a\x00b\x07c  \t d\r\n\r\n\r\n\r\ne  ") == "abc d\n\ne"
    assert c.clean("full-width，punctuation。stays") == "full-width，punctuation。stays"
    assert c.clean("e\u0301") == "\u00e9"  # NFC
    assert c.clean("plain ascii text") == "plain ascii text"


def test_length_filter():
    f = LengthFilter(min_chars=10, max_chars=20)
    assert f.filter(doc("long enough text")) is True
    assert f.filter(doc("short")) == (False, "too_short")
    assert f.filter(doc("x" * 21)) == (False, "too_long")


def test_gopher_quality_keeps_real_prose_and_drops_junk(english_paragraphs):
    f = GopherQualityFilter()
    kept = sum(f.filter(doc(p)) is True for p in english_paragraphs)
    assert kept >= 0.9 * len(english_paragraphs)
    prose = english_paragraphs[0]
    assert f.filter(doc("too few words to be a document")) == (False, "gopher_short_doc")
    assert f.filter(doc(" ".join(["#tag"] * 60) + " " + prose)) == (False, "gopher_too_many_hashes")
    assert f.filter(doc("\n".join(["- item with some words"] * 60))) == (False, "gopher_too_many_bullets")
    assert f.filter(doc(" ".join(["12345 67890 !!! ???"] * 30) + " the and of")) == (False, "gopher_below_alpha_ratio")
    assert f.filter(doc(" ".join(["lorem ipsum dolor sit amet"] * 20))) == (False, "gopher_few_stop_words")
    assert f.filter(doc(" ".join(["a b c d e f g"] * 12) + " the of")) == (False, "gopher_below_avg_word_length")


def test_gopher_repetition_drops_repeated_text(english_paragraphs):
    f = GopherRepetitionFilter()
    kept = sum(f.filter(doc(p)) is True for p in english_paragraphs)
    assert kept >= 0.9 * len(english_paragraphs)
    p = english_paragraphs[0]
    assert f.filter(doc("\n\n".join([p] + ["Buy now, limited offer!"] * 5)))[0] is False
    assert f.filter(doc("\n".join(["same line here"] * 10 + [p])))[0] is False
    spam = " ".join(["cheap pills online"] * 40)
    assert f.filter(doc(spam)) == (False, "dup_line_char_frac") or f.filter(doc(spam))[1].startswith("top_")
    assert f.filter(doc(p + " " + p))[1].startswith("duplicated_")


def test_c4_line_filter_removes_lines_and_drops_documents():
    f = C4LineFilter()
    d = doc(
        "This is a real sentence with words.\n"
        "Menu\n"
        "Please enable JavaScript to view the comments.\n"
        "We use cookies; see our privacy policy for details.\n"
        "Another real line [1] that stays here."
    )
    assert f.filter(d) is True
    assert d.text == "This is a real sentence with words.\nAnother real line  that stays here."
    assert f.stats.counters["lines_removed"] == 3
    assert f.filter(doc("Lorem ipsum dolor sit amet, consectetur.")) == (False, "lorem_ipsum")
    assert f.filter(doc("function f() { return 1; } is code here")) == (False, "curly_bracket")
    assert f.filter(doc("Home\nAbout\nContact")) == (False, "too_few_sentences")
    strict = C4LineFilter(min_sentences=5)
    assert strict.filter(doc("One sentence. Two sentences. Three here.")) == (False, "too_few_sentences")
    assert strict.filter(doc("一句话。两句话。三句话。四句话。五句话。")) is True  # CJK sentence ends count


def test_language_filter_with_py3langid(shared_data):
    f = LanguageFilter(languages=["en"])
    en = doc("The quick brown fox jumps over the lazy dog while the farmer watches from the porch.")
    assert f.filter(en) is True and en.meta["language"] == "en"
    de_line = (shared_data / "multi30k" / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[0]
    assert f.filter(doc(de_line + " " + de_line)) == (False, "language_de")
    zh = LanguageFilter(languages=["zh"])
    assert zh.filter(doc("水运工程项目作为我国航运和水利的重要组成部分,其重要性不言而喻.")) is True


def _chinese_paragraphs(shared_data) -> list[str]:
    """Clean Chinese paragraphs: CSL abstracts (modern, technical) and 红楼梦 paragraphs (classical
    prose). Paragraphs under 50 characters (chapter titles, one-line dialogue) are left out: Gopher's
    published minimum is 50 words, and it removes short English paragraphs just the same."""
    texts = []
    with open(shared_data / "csl_zh_title_summarization" / "dev.tsv", encoding="utf-8") as f:
        texts += [r["abstract"] for r in csv.DictReader(f, delimiter="\t")]
    hlm = (shared_data / "zh_classical" / "hongloumeng_ch01-20.txt").read_text(encoding="utf-8")
    texts += [p.strip() for p in hlm.splitlines()]
    return [t for t in texts if len(t.replace(" ", "")) >= 50]


def test_clean_chinese_paragraphs_are_at_least_90_percent_kept(shared_data):
    paragraphs = _chinese_paragraphs(shared_data)
    assert len(paragraphs) > 1300
    cfg = DataConfig(steps=["clean", "length", "gopher_quality", "gopher_repetition", "c4", "pii"])
    stream = iter([Document(str(i), t, "zh", {}) for i, t in enumerate(paragraphs)])
    steps = build_steps(cfg)
    for step in steps:
        stream = step.run(stream)
    kept = list(stream)
    assert len(kept) >= 0.9 * len(paragraphs), [(s.name, dict(s.stats.removed)) for s in steps]
    # each word-based step on its own keeps ≥ 90 % too
    for step in steps:
        assert step.stats.docs_out >= 0.9 * step.stats.docs_in, (step.name, dict(step.stats.removed))


def test_chinese_with_jieba_segmentation(shared_data):
    # jieba words are ~1.5 characters, so Gopher's 50-word minimum means ~75 characters
    paragraphs = [p for p in _chinese_paragraphs(shared_data) if len(p) >= 100][:200]
    f = GopherQualityFilter(segmenter="jieba")
    assert sum(f.filter(doc(p)) is True for p in paragraphs) >= 0.9 * len(paragraphs)


def test_filter_run_counts_in_out_and_reasons():
    f = LengthFilter(min_chars=5)
    rejected = []
    f.on_reject = lambda d, step, reason: rejected.append((d.text, step, reason))
    out = list(f.run(iter([doc("long text"), doc("no"), doc("also long")])))
    assert [d.text for d in out] == ["long text", "also long"]
    assert f.stats.to_json() == {"name": "length", "in": 3, "out": 2, "removed": {"too_short": 1}, "counters": {}}
    assert rejected == [("no", "length", "too_short")]


def test_step_settings_are_defined_once_in_config():
    """Each built-in step takes its settings as **settings validated by its config class (config.py, where
    the defaults are written once): no default of its own in the signature, every field set from the
    config, and a wrong setting is a ConfigError naming the step and field (not a TypeError)."""
    import inspect

    from llmchain import config
    from llmchain.data.filters import LengthFilter
    from llmchain.data.steps import BUILTIN_STEPS, step_from_spec
    from llmchain.errors import ConfigError

    for name, spec in BUILTIN_STEPS.items():
        step = step_from_spec({"class": spec, "kwargs": {}})
        params = inspect.signature(type(step).__init__).parameters
        assert not [p for p in params.values() if p.default is not inspect.Parameter.empty], name
        section = getattr(config.DataConfig(), name)
        for field in type(section).model_fields:
            value = getattr(step, field)
            want = getattr(section, field)
            assert value == want or sorted(map(str, value)) == sorted(map(str, want)), (name, field)
    with pytest.raises(ConfigError, match="step 'length'.*min_char"):
        LengthFilter(min_char=5)
    with pytest.raises(ConfigError, match="min_chars"):
        LengthFilter(min_chars="many")
