"""The arena page in headless Chromium (Debian's): draw a prompt, watch two answers stream, vote,
see the names and the leaderboard change. Two tiny in-process models."""

from __future__ import annotations

import pytest

from llmchain.arena.app import ArenaSampling, create_app
from llmchain.arena.backends import EngineBackend
from llmchain.arena.store import ArenaStore
from serve_fixtures import LiveServer, make_model_dir


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    root = tmp_path_factory.mktemp("arena-page")
    backends = {name: EngineBackend(name, make_model_dir(root / name, None, seed=seed))
                for name, seed in (("tiny-one", 1), ("tiny-two", 2))}  # fmt: skip
    store = ArenaStore(root / "arena.sqlite")
    store.register_models({n: b.source for n, b in backends.items()})
    prompts = ["To be, or not to be", "是谁在敲打我窗"]
    app = create_app(backends, store, prompts, ArenaSampling(max_tokens=16, temperature=0.8, seed=7),
                     bootstrap=20)
    with LiveServer(app) as srv:
        srv.store = store
        yield srv


def test_page_battles_votes_and_the_leaderboard_changes(arena, browser):
    page = browser.new_page()
    page.goto(arena.url + "/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.get_attribute("#board", "data-votes") == "0"
    assert len(page.query_selector_all("#board tbody tr")) == 0
    page.click("#draw")  # a prompt from the file
    page.wait_for_function("document.getElementById('prompt').value.length > 0")
    drawn = page.input_value("#prompt")
    assert drawn in ("To be, or not to be", "是谁在敲打我窗")
    page.click("#go")
    page.wait_for_selector("body[data-state='voting']", timeout=60_000)
    text_a, text_b = page.inner_text("#text-a"), page.inner_text("#text-b")
    assert text_a and text_b
    assert page.inner_text("#name-a") == "" and page.inner_text("#name-b") == ""  # anonymous until the vote
    page.click(".vote[data-winner='a']")
    page.wait_for_selector("body[data-state='voted']")
    name_a, name_b = page.inner_text("#name-a"), page.inner_text("#name-b")
    assert {name_a, name_b} == {"tiny-one", "tiny-two"}
    page.wait_for_function("document.getElementById('board').dataset.votes === '1'")
    rows = page.query_selector_all("#board tbody tr")
    assert len(rows) == 2
    assert rows[0].query_selector_all("td")[1].inner_text() == name_a  # the winner leads
    for b in page.query_selector_all(".vote"):
        assert b.is_disabled()  # one vote per battle
    battle = arena.store.votes()
    assert len(battle) == 1 and battle[0].winner == "a" and battle[0].model_a == name_a
    # a typed prompt: stored as typed, with the prompt as given
    page.fill("#prompt", "Good morrow")
    page.click("#go")
    page.wait_for_selector("body[data-state='voting']", timeout=60_000)
    page.click(".vote[data-winner='tie']")
    page.wait_for_function("document.getElementById('board').dataset.votes === '2'")
    import sqlite3

    with sqlite3.connect(arena.store.path) as con:
        rows = con.execute("SELECT prompt, prompt_source FROM battles ORDER BY created").fetchall()
    assert rows == [(drawn, "file"), ("Good morrow", "typed")]
    page.close()
