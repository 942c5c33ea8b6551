"""Cutting a document into passages, and the words its keyword index holds.

`split_passages(text)` returns character spans [start, end) of `text`, so `text[start:end]` is the
passage exactly (a citation can point back into the source). Sentences end at . ! ? followed by a
space, at 。！？；!? (Chinese needs no space after them) and at line breaks; sentences are packed
greedily into passages of at most `max_tokens` *estimated* encoder tokens (a CJK character is one
token for BERT-family vocabularies, a Latin word about 1.3 word pieces), so a passage fits the
encoder and a Chinese passage stays at about `max_tokens` characters. A sentence longer than that is
cut at word (or, in CJK, character) boundaries.

`keyword_terms(text)` is what goes into the FTS5 index: CJK runs are segmented with jieba's search
mode (words and their sub-words: 共和国 → 共和 共和国), so a 2-character Chinese word is a term of its
own, which FTS5's unicode61 tokenizer (one token per CJK run) and trigram tokenizer (3+ characters)
would miss. Latin text passes through unchanged and FTS5's porter stemmer handles it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from llmchain.data.text import CJK_CHARS

_CJK = re.compile(rf"[{CJK_CHARS}]")
_CJK_RUN = re.compile(rf"[{CJK_CHARS}]+")
# a sentence ends after its terminator (and any closing quotes / brackets)
# (Chinese text often uses an ASCII full stop, with no space after it: "缺陷.该染料")
_SENT_END = re.compile(rf"(?:[。！？；!?]+|\.+(?=\s|[{CJK_CHARS}]))[”’」』）)\]\"']*|\n")
# estimated encoder tokens: a CJK character, a Latin word (1.3 word pieces), a punctuation mark
_TOKEN = re.compile(rf"[{CJK_CHARS}]|[^\W_]+|[^\w\s]|_")


def _cost(piece: str) -> float:
    return 1.3 if piece[0].isalnum() and not _CJK.match(piece) else 1.0


def estimate_tokens(text: str) -> float:
    """About how many word pieces a BERT-family tokenizer makes of `text` (without [CLS]/[SEP])."""
    return sum(_cost(m.group()) for m in _TOKEN.finditer(text))


def _sentences(text: str) -> Iterator[tuple[int, int]]:
    start = 0
    for m in _SENT_END.finditer(text):
        if m.end() > start:
            yield start, m.end()
            start = m.end()
    if start < len(text):
        yield start, len(text)


def _cut_long(text: str, start: int, end: int, max_tokens: int) -> Iterator[tuple[int, int]]:
    """Cut [start, end) into pieces of at most max_tokens estimated tokens, at token ends."""
    budget, piece_start = 0.0, start
    for m in _TOKEN.finditer(text, start, end):
        c = _cost(m.group())
        if budget + c > max_tokens and budget > 0:
            yield piece_start, m.start()
            piece_start, budget = m.start(), 0.0
        budget += c
    if piece_start < end:
        yield piece_start, end


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_passages(text: str, max_tokens: int = 160) -> list[tuple[int, int]]:
    """Character spans of the passages of `text` (whitespace-trimmed, non-empty, in order)."""
    units: list[tuple[int, int, float]] = []
    for s, e in _sentences(text):
        s, e = _strip(text, s, e)
        if s == e:
            continue
        cost = estimate_tokens(text[s:e])
        if cost <= max_tokens:
            units.append((s, e, cost))
        else:
            units.extend((a, b, estimate_tokens(text[a:b])) for a, b in _cut_long(text, s, e, max_tokens))
    spans: list[tuple[int, int]] = []
    cur_start, cur_end, cur_cost = -1, -1, 0.0
    for s, e, c in units:
        if cur_start >= 0 and cur_cost + c <= max_tokens:
            cur_end, cur_cost = e, cur_cost + c
            continue
        if cur_start >= 0:
            spans.append(_strip(text, cur_start, cur_end))
        cur_start, cur_end, cur_cost = s, e, c
    if cur_start >= 0:
        spans.append(_strip(text, cur_start, cur_end))
    return [(s, e) for s, e in spans if e > s]


_JIEBA = None


def _jieba():
    global _JIEBA
    if _JIEBA is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" lines are noise on a CLI
        jieba.initialize()
        _JIEBA = jieba
    return _JIEBA


def keyword_terms(text: str) -> str:
    """`text` with its CJK runs replaced by space-separated jieba search-mode words (what FTS5 indexes)."""
    if not _CJK.search(text):
        return text
    jieba = _jieba()
    return _CJK_RUN.sub(lambda m: " " + " ".join(jieba.cut_for_search(m.group(), HMM=True)) + " ", text)


def query_terms(query: str, limit: int = 64) -> list[str]:
    """The distinct words of a query as the keyword index sees them (lower-cased, at most `limit`)."""
    words = re.findall(r"[^\W_]+", keyword_terms(query).lower())
    return list(dict.fromkeys(words))[:limit]
