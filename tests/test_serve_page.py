"""The chat page in headless Chromium (Debian's): send a message, see a streamed reply, stop a long one."""

from __future__ import annotations

import pytest

from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import LiveServer


@pytest.fixture(scope="module")
def server(serve_model_dir):
    # The engine in-process, each step slowed by 30 ms: a tiny model streams ~700 tokens/s here, so a
    # long reply would end before a browser could click Stop on a busy machine.
    import time

    from llmchain.infer.engine import Engine

    step = Engine.step

    def slow_step(self):
        time.sleep(0.03)
        step(self)

    d = serve_model_dir()
    mp = pytest.MonkeyPatch()
    mp.setattr(Engine, "step", slow_step)
    try:
        with LiveServer(create_app(ServeOptions(model_dir=str(d), max_batch_size=4, threads=1,
                                                engine_process=False))) as srv:  # fmt: skip
            yield srv
    finally:
        mp.undo()


def test_chat_page_streams_a_reply_and_stops(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'model'")
    page.click("#settings summary")  # open the settings panel
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "20")
    page.fill("#system", "You are terse.")
    page.fill("#input", "Good morrow, sir")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-streaming='false']", timeout=60_000)
    reply = page.inner_text(".msg.assistant .content")
    assert page.inner_text(".msg.user .content") == "Good morrow, sir"
    assert reply.strip() and "error" not in page.get_attribute(".msg.assistant", "class")
    assert "tokens" in page.inner_text("#status")
    # second turn, long (sampled: a greedy reply of a random model may end at once): stop it mid-stream
    page.fill("#max_tokens", "480")
    page.fill("#temperature", "1")
    page.fill("#input", "Tell me more")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .content')[1].textContent.length > 0")
    page.click("#stop")
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-streaming=false]').length === 2")
    assert page.inner_text("#status") == "stopped"
    assert len(page.query_selector_all(".msg")) == 4
    page.close()
