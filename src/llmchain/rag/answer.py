"""Answers grounded in retrieved passages: the numbered context block put in the prompt, the [n] markers
an answer cites, and the check that every citation quotes its source exactly.

One implementation for both sides: the server (`serve --index`, serve/api.py) and `llmchain ask`
(commands/ask.py), which sends the same prompt to any OpenAI-compatible server. A hit is anything with
`passage_id`, `source`, `start`, `end`, `text` (rag/index.py `Hit`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from llmchain.errors import UserError

INSTRUCTION = (
    "Answer the question using only the numbered passages below. Cite the passage each statement comes "
    "from as [n], for example [1] or [2][3]. If the passages do not hold the answer, say so."
)
# [1], [2, 3], [1; 4]: what models write when told to cite "as [n]"; three digits at most (k is small)
_MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")


def context_block(hits: Sequence[Any]) -> str:
    """The system text: the instruction, then each passage as `[n] (source, characters start-end)` and
    its text, numbered from 1 in rank order."""
    parts = [INSTRUCTION]
    for n, h in enumerate(hits, 1):
        parts.append(f"[{n}] ({h.source}, characters {h.start}-{h.end})\n{h.text}")
    return "\n\n".join(parts)


def grounded_messages(messages: list[dict[str, str]], hits: Sequence[Any]) -> list[dict[str, str]]:
    """`messages` with the passages in front as a system message. A conversation that starts with a
    system message gets the block prepended to it instead: many chat templates take one system message,
    and only first."""
    if not hits:
        return list(messages)
    block = context_block(hits)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=block + "\n\n" + messages[0]["content"])
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def last_user_text(messages: list[dict[str, str]]) -> str | None:
    """What to retrieve for: the last user message's text (None if there is none or it is blank)."""
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"] if m["content"].strip() else None
    return None


def cited_numbers(answer: str, n_passages: int) -> list[int]:
    """The passage numbers (1-based) `answer` cites as [n], in order of first citation; numbers outside
    1..n_passages (a model inventing [7] of 4) are ignored."""
    seen: list[int] = []
    for m in _MARKER.finditer(answer):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if 1 <= n <= n_passages and n not in seen:
                seen.append(n)
    return seen


def passage_entry(n: int, hit: Any) -> dict[str, Any]:
    """A passage as the API shows it: its number in the prompt, where it is, and its text."""
    return {"index": n, "passage_id": hit.passage_id, "source": hit.source, "start": hit.start, "end": hit.end,
            "quote": hit.text}  # fmt: skip


def verify(hits: Sequence[Any], source_text: Callable[[str], str]) -> list[bool]:
    """For each hit, whether its text is exactly `source_text(source)[start:end]` — the only kind of
    quote we send. A source the index does not know (KeyError, or whatever lookup error it raises)
    fails the check."""
    texts: dict[str, str | None] = {}
    ok = []
    for h in hits:
        if h.source not in texts:
            try:
                texts[h.source] = source_text(h.source)
            except (LookupError, ValueError, OSError, UserError):  # Index.source_text: UserError
                texts[h.source] = None
        text = texts[h.source]
        ok.append(text is not None and 0 <= h.start <= h.end <= len(text) and text[h.start : h.end] == h.text)
    return ok


def citations(answer: str, hits: Sequence[Any], verified: Sequence[bool]) -> tuple[list[dict], int]:
    """The passages `answer` cites as [n] (n = the passage's number in the prompt) whose `verified` flag
    (`verify(hits, source_text)`) holds; returns (citations in order of first citation, how many were
    cited but failed the check and were dropped)."""
    cited = cited_numbers(answer, len(hits))
    kept = [passage_entry(n, hits[n - 1]) for n in cited if verified[n - 1]]
    return kept, len(cited) - len(kept)


def fit_passages(hits: Sequence[Any], fits: Callable[[list], bool]) -> list:
    """The longest rank-order prefix of `hits` for which `fits(prefix)` holds (e.g. the prompt leaves room
    for the answer in the context); [] if even one passage does not fit."""
    kept = list(hits)
    while kept and not fits(kept):
        kept.pop()
    return kept
