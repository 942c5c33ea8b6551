"""Word splitting that treats Chinese (and other CJK text) as a first-class language.

Word-based heuristics written for English (Gopher, C4) count whitespace-separated words; Chinese
has no spaces, so a whole paragraph would be one "word" and fail every check. Here every CJK
character is a word of its own (optionally jieba words instead), and runs of other non-space
characters are words as usual.
"""

from __future__ import annotations

import re

# CJK unified ideographs (+ext A, compatibility), kana, hangul syllables
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
# CJK punctuation (。，、「」…) and full-width symbols are one-character tokens too
CJK_PUNCT = "\u3001-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2026\u2014\u201c\u201d\u2018\u2019"
_WORD_RE = re.compile(rf"[{CJK_CHARS}{CJK_PUNCT}]|[^\s{CJK_CHARS}{CJK_PUNCT}]+")
_CJK_RE = re.compile(rf"[{CJK_CHARS}]")
_NON_SPACE_RE = re.compile(r"\S")

# Stop words for the Gopher "has some stop words" check: English (Gopher's list) and Chinese
# (modern and classical function characters), so Chinese prose passes for the same reason English does.
STOP_WORDS_EN = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
STOP_WORDS_ZH = frozenset("的了是在和有我不也就这之而其以于者乎")

# Sentence / line terminators in Latin and CJK text (．is used by some Chinese editions)
TERMINAL_PUNCT = frozenset(".!?。！？．…\"'”’」』)）")


_last: tuple[str, str, list[str]] = ("", "", [])


def words(text: str, segmenter: str = "char") -> list[str]:
    """Words of `text`: CJK characters one each (or jieba words with segmenter='jieba'), other
    non-space runs as they are. Do not mutate the returned list (the last result is reused, since
    consecutive filters split the same text)."""
    global _last
    if text is _last[0] and segmenter == _last[1]:
        return _last[2]
    if segmenter == "jieba" and _CJK_RE.search(text):
        import jieba  # optional: imported only when asked for

        ws = [w for w in jieba.lcut(text) if not w.isspace()]
    else:
        ws = _WORD_RE.findall(text)
    _last = (text, segmenter, ws)
    return ws


def cjk_ratio(text: str) -> float:
    """Share of non-space characters that are CJK (0 for empty text)."""
    total = len(_NON_SPACE_RE.findall(text))
    return len(_CJK_RE.findall(text)) / total if total else 0.0


def is_cjk(text: str, threshold: float = 0.3) -> bool:
    return cjk_ratio(text) >= threshold


def normalize_for_hash(text: str) -> str:
    """Lower-cased text with all whitespace runs collapsed (for exact dedup)."""
    return " ".join(text.lower().split())
