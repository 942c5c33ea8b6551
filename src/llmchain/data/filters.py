"""Quality filters: length, Gopher quality, Gopher repetition, C4 line rules, language.

Thresholds default to the published values (Gopher: Rae et al. 2021, table A1; C4: Raffel et al.
2020, as implemented in datatrove). Word counts use `llmchain.data.text.words`, where every CJK
character is a word, so Chinese text is judged by the same rules instead of being one long "word";
the two rules that are meaningless for Chinese (average word length, English stop words) switch to
their Chinese counterparts when a document is mostly CJK.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from llmchain.config import (
    C4Config,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    LengthConfig,
)
from llmchain.data.steps import Document, Filter, configure
from llmchain.data.text import CJK_CHARS, STOP_WORDS_EN, STOP_WORDS_ZH, TERMINAL_PUNCT, is_cjk, words

_PUNCT_CHARS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~，。、；：？！…—·「」『』（）《》“”‘’【】．"
# a word is "content" if it has a character that is not punctuation; "alphabetic" if it has a letter
_NON_PUNCT_RE = re.compile("[^" + re.escape(_PUNCT_CHARS) + "]")
_ALPHA_RE = re.compile(r"[^\W\d_]")


class LengthFilter(Filter):
    """Drop documents shorter than `min_chars` or longer than `max_chars` (after cleaning)."""

    name = "length"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `LengthConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, LengthConfig, settings)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text)
        if n < self.min_chars:
            return False, "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_long"
        return True


class GopherQualityFilter(Filter):
    """Gopher's quality rules (word count, mean word length, symbols, bullets, ellipses, alphabetic
    words, stop words). Mostly-CJK documents skip the mean-word-length rule and count Chinese
    function characters as stop words."""

    name = "gopher_quality"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `GopherQualityConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, GopherQualityConfig, settings)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        ws = words(text, self.segmenter)
        content = list(filter(_NON_PUNCT_RE.search, ws))
        n = len(content)
        if self.min_doc_words and n < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n > self.max_doc_words:
            return False, "gopher_long_doc"
        cjk = is_cjk(text)
        if not cjk and n:
            avg = sum(map(len, content)) / n
            if self.min_avg_word_length and avg < self.min_avg_word_length:
                return False, "gopher_below_avg_word_length"
            if self.max_avg_word_length and avg > self.max_avg_word_length:
                return False, "gopher_above_avg_word_length"
        n_all = max(len(ws), 1)
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_all > self.max_symbol_word_ratio:
                return False, "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_all > self.max_symbol_word_ratio:
                return False, "gopher_too_many_ellipsis"
        lines = text.splitlines() or [text]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(("•", "-", "*", "·")) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return False, "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio is not None:
            ell = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ell / len(lines) > self.max_ellipsis_lines_ratio:
                return False, "gopher_too_many_end_ellipsis"
        if self.min_alpha_words_ratio is not None:
            # punctuation split off as its own token (CJK, jieba) is not a word, as in whitespace splitting
            alpha = sum(map(bool, map(_ALPHA_RE.search, content)))
            if alpha / max(n, 1) < self.min_alpha_words_ratio:
                return False, "gopher_below_alpha_ratio"
        if self.min_stop_words:
            if cjk:
                found = len(STOP_WORDS_ZH.intersection(text))
            else:
                found = len(STOP_WORDS_EN.intersection(w.lower() for w in ws))
            if found < self.min_stop_words:
                return False, "gopher_few_stop_words"
        return True


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in the repeats) — the first copy is not a repeat."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup, dup_chars


def _top_chars(ws: list[str], n: int) -> int:
    """Characters of the most frequent n-gram times its count (first seen wins ties); 0 if none repeats."""
    gram, count = Counter(zip(*(ws[i:] for i in range(n)), strict=False)).most_common(1)[0]
    return sum(map(len, gram)) * count if count > 1 else 0


def _dup_chars(ws: list[str], n: int, limit: float) -> int:
    """Characters in repeated n-grams, counted as Gopher does (non-overlapping, greedy); -1 when no
    n-gram repeats at all (then no longer n-gram repeats either).

    The greedy count never exceeds the characters of all positions whose n-gram occurred before,
    so when that bound (computed at C speed) is within `limit` the Python walk is skipped.
    """
    grams = list(zip(*(ws[i:] for i in range(n)), strict=False))
    first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1), strict=False))  # n-gram -> first position
    if len(first) == len(grams):
        return -1
    starts = np.fromiter(map(first.__getitem__, grams), dtype=np.int64, count=len(grams))
    repeated = np.flatnonzero(starts != np.arange(len(grams)))
    cum = np.concatenate([[0], np.cumsum(np.fromiter(map(len, ws), dtype=np.int64, count=len(ws)))])
    if int((cum[repeated + n] - cum[repeated]).sum()) <= limit:
        return 0
    seen: set[tuple[str, ...]] = set()
    total, i, end = 0, 0, len(grams)
    while i < end:
        gram = grams[i]
        if gram in seen:
            total += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


class GopherRepetitionFilter(Filter):
    """Gopher's repetition rules: duplicate lines/paragraphs, top 2-4-gram share, duplicate 5-10-grams."""

    name = "gopher_repetition"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `GopherRepetitionConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, GopherRepetitionConfig, settings)
        self.top_n_grams = [(int(n), float(f)) for n, f in self.top_n_grams]
        self.dup_n_grams = [(int(n), float(f)) for n, f in self.dup_n_grams]
        # Gopher's n-grams are of English words; a Chinese word is ~1.5 characters, so character
        # n-grams of mostly-CJK text are scaled by `cjk_ngram_scale` (same verdicts as jieba words
        # on the CSL abstracts, at a fifth of the cost)
        self._cjk_top = [(max(1, round(n * self.cjk_ngram_scale)), f) for n, f in self.top_n_grams]
        self._cjk_dup = [(max(1, round(n * self.cjk_ngram_scale)), f) for n, f in self.dup_n_grams]
        self._para_re = re.compile(r"\n{2,}")
        self._line_re = re.compile(r"\n+")

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        n_chars = len(text)
        paras = self._para_re.split(text.strip())
        dup, dup_chars = _dup_stats(paras)
        if self.dup_para_frac is not None and dup / len(paras) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac is not None and dup_chars / n_chars > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_re.split(text)
        dup, dup_chars = _dup_stats(lines)
        if self.dup_line_frac is not None and dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac is not None and dup_chars / n_chars > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        ws = words(text, self.segmenter)
        top_n_grams, dup_n_grams = self.top_n_grams, self.dup_n_grams
        if self.segmenter == "char" and is_cjk(text):
            top_n_grams, dup_n_grams = self._cjk_top, self._cjk_dup
        # if no n-gram repeats, no longer one does: stop at the first n without repeats
        for n, frac in sorted(top_n_grams):
            if len(ws) < n:
                break
            top = _top_chars(ws, n)
            if top / n_chars > frac:
                return False, f"top_{n}_gram"
            if top == 0:
                break
        for n, frac in sorted(dup_n_grams):
            if len(ws) < n:
                break
            dup = _dup_chars(ws, n, frac * n_chars)
            if dup < 0:
                break
            if dup / n_chars > frac:
                return False, f"duplicated_{n}_n_grams"
        return True


_CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
# a sentence ends at . ! ? before a space, the line end, a quote or a CJK character; 。！？ always end one
_SENTENCE_END_RE = re.compile(rf"[.!?]+(?=\s|$|[\"'”’」』)）{CJK_CHARS}])|[。！？．]+")
_POLICY_RE = re.compile("terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies")
_HAS_CJK_RE = re.compile(f"[{CJK_CHARS}]")


class C4LineFilter(Filter):
    """C4's rules: drop lines that are too short, mention javascript or cookie/policy text, have an
    over-long word or (optionally) no terminal punctuation; drop documents with "lorem ipsum", a curly
    bracket, or fewer than `min_sentences` sentences left. Edits the text (counter: `lines_removed`).

    `min_sentences` defaults to 1, not C4's 5: C4 judged whole web pages, while paragraphs, reviews
    and Chinese prose (long sentences joined by commas) have fewer; set 5 for web crawls."""

    name = "c4"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `C4Config`'s (config.py): one definition.
        super().__init__()
        configure(self, C4Config, settings)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        kept: list[str] = []
        sentences = 0
        removed = 0
        for line in doc.text.splitlines():
            line = line.strip()
            if not line:
                if kept and kept[-1]:
                    kept.append("")  # keep paragraph breaks
                continue
            parts = line.split()
            if len(line) > self.max_word_length > 0 and max(map(len, words(line))) > self.max_word_length:
                removed += 1
                continue
            if self.remove_citations and "[" in line:
                line = _CITATION_RE.sub("", line)
            if self.filter_no_terminal_punct and (line[-1] not in TERMINAL_PUNCT or line.endswith("...")):
                removed += 1
                continue
            # whitespace words are a lower bound of words(); count CJK characters only when needed
            if len(parts) < self.min_words_per_line and (
                not _HAS_CJK_RE.search(line) or len(words(line)) < self.min_words_per_line
            ):
                removed += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                removed += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and _POLICY_RE.search(lower):
                removed += 1
                continue
            # a line without sentence punctuation still counts as one sentence (as in C4's splitter)
            sentences += max(1, len(_SENTENCE_END_RE.findall(line)))
            kept.append(line)
        if removed:
            self.stats.counters["lines_removed"] += removed
        if sentences < self.min_sentences:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return True


class LanguageFilter(Filter):
    """Keep documents whose language (py3langid, shipped in its PyPI package) is in `languages`
    with a probability of at least `min_score`. Stores `meta["language"]` and its score."""

    name = "language"

    def __init__(self, **settings: Any) -> None:
        # The settings, their defaults and their checks are `LanguageConfig`'s (config.py): one definition.
        super().__init__()
        configure(self, LanguageConfig, settings)
        self.languages = set(self.languages)
        self._identifier = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        lang, score = self._identifier.classify(doc.text.replace("\n", " "))
        doc.meta["language"], doc.meta["language_score"] = lang, round(float(score), 4)
        if self.languages and lang not in self.languages:
            return False, f"language_{lang}"
        if score < self.min_score:
            return False, "language_low_score"
        return True
