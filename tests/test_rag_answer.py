"""Grounded answers without a model or an index: the prompt's passage block, [n] markers, and citations
that must quote their source exactly (a tampered offset is dropped)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmchain.rag.answer import (
    INSTRUCTION,
    citations,
    cited_numbers,
    fit_passages,
    grounded_messages,
    last_user_text,
    verify,
)

SOURCES = {
    "notes/tea.md": "Green tea is steamed or pan-fired soon after picking. Black tea is fully oxidised.",
    "notes/alps.txt": "The Matterhorn is 4,478 metres high. It was first climbed in 1865.",
}


@dataclass
class FakeHit:
    passage_id: int
    source: str
    start: int
    end: int
    text: str
    score: float = 1.0


def hit(pid: int, source: str, needle: str) -> FakeHit:
    start = SOURCES[source].index(needle)
    return FakeHit(pid, source, start, start + len(needle), needle)


HITS = [hit(7, "notes/alps.txt", "It was first climbed in 1865."),
        hit(3, "notes/tea.md", "Black tea is fully oxidised."),
        hit(9, "notes/alps.txt", "The Matterhorn is 4,478 metres high.")]  # fmt: skip


def test_passages_go_first_as_a_numbered_system_block():
    msgs = grounded_messages([{"role": "user", "content": "When was the Matterhorn first climbed?"}], HITS)
    assert [m["role"] for m in msgs] == ["system", "user"]
    block = msgs[0]["content"]
    assert block.startswith(INSTRUCTION)
    for n, h in enumerate(HITS, 1):
        assert f"[{n}] ({h.source}, characters {h.start}-{h.end})\n{h.text}" in block
    assert block.index("[1]") < block.index("[2]") < block.index("[3]")
    # a conversation's own system prompt stays, after the passages, in the one system message
    msgs = grounded_messages(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}], HITS
    )
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"].endswith("\n\nBe terse.")
    assert grounded_messages([{"role": "user", "content": "Hi"}], []) == [{"role": "user", "content": "Hi"}]


def test_last_user_message_is_the_query():
    msgs = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"}, {"role": "assistant", "content": "b"}]  # fmt: skip
    assert last_user_text(msgs) == "second"
    assert last_user_text([{"role": "system", "content": "x"}]) is None
    assert last_user_text([{"role": "user", "content": "  "}]) is None


def test_cited_numbers_in_order_of_first_citation():
    assert cited_numbers("In 1865 [1]. Black tea [2][1]; see [3, 2] and [ 1 ;3].", 3) == [1, 2, 3]
    assert cited_numbers("Made up [7], [0] and [12] and [x] and [1a].", 3) == []
    assert cited_numbers("Only the second [2].", 3) == [2]


def test_citations_quote_exactly_the_text_at_their_offsets():
    cites, dropped = citations("It was 1865 [1], and 4,478 m [3].", HITS, verify(HITS, SOURCES.__getitem__))
    assert dropped == 0
    assert [(c["index"], c["passage_id"]) for c in cites] == [(1, 7), (3, 9)]
    for c in cites:
        assert SOURCES[c["source"]][c["start"] : c["end"]] == c["quote"]
    assert citations("No markers here.", HITS, [True] * 3) == ([], 0)


def test_a_tampered_offset_or_unknown_source_is_dropped():
    shifted = replace(HITS[0], start=HITS[0].start + 1, end=HITS[0].end + 1)
    beyond = replace(HITS[1], end=10_000)
    unknown = replace(HITS[2], source="../etc/passwd")
    hits = [shifted, HITS[1], beyond, unknown]
    assert verify(hits, SOURCES.__getitem__) == [False, True, False, False]
    cites, dropped = citations("[1] [2] [3] [4]", hits, verify(hits, SOURCES.__getitem__))
    assert [c["index"] for c in cites] == [2] and dropped == 3


def test_fit_passages_keeps_the_best_ranked_prefix_that_fits():
    assert fit_passages(HITS, lambda hs: len(hs) <= 2) == HITS[:2]
    assert fit_passages(HITS, lambda hs: True) == HITS
    assert fit_passages(HITS, lambda hs: False) == []
