"""Question answering over an index, served: `serve --index` puts the passages in the prompt and answers
with citations that quote their source exactly; /v1/embeddings through the official `openai` client;
GET /v1/passages/{id}; a server without an index unchanged; `llmchain ask` with --base-url and --model.

A tiny random model answers nonsense, so what an answer cites is scripted (`Scripted`, a test double of
the engine that records each prompt): these tests check the plumbing, not answer quality.
"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import openai
import pytest

from conftest import run_cli
from llmchain.infer.requests import Event, RequestHandle
from llmchain.rag.answer import INSTRUCTION
from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import LiveServer

KEY = "sk-qa"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = {
    "tea.md": "# Tea\n\nGreen tea is steamed or pan-fired soon after picking, which stops oxidation. Black tea "
              "is rolled and fully oxidised before drying.\n\nOolong sits between the two.\n",
    "alps.txt": "The Matterhorn is 4,478 metres high. It was first climbed on 14 July 1865 by Edward Whymper's "
                "party; four of the seven died on the descent.\n",
    "rust.md": "Rust's borrow checker enforces that a value has either one mutable reference or any number of "
               "shared references at a time.\n",
    "bees.txt": "A honey bee colony has one queen, a few hundred drones and tens of thousands of workers. "
                "Workers communicate the direction of flowers with the waggle dance.\n",
}  # fmt: skip
QUESTION = "When was the Matterhorn first climbed?"


class Scripted:
    """The server's engine with a switch: while `reply` is set, a request gets `reply` (in three stream
    pieces) instead of the model's text. Every prompt it is given is recorded."""

    def __init__(self, engine):
        self.engine, self.reply, self.prompts = engine, None, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, prompt, params, loop=None):
        self.prompts.append(prompt)
        if self.reply is None:
            return self.engine.submit(prompt, params, loop)
        h = RequestHandle(prompt, params, loop)
        cut = [0, len(self.reply) // 3, 2 * len(self.reply) // 3, len(self.reply)]
        for j in range(params.n):
            for a, b in zip(cut, cut[1:], strict=False):
                h._emit(Event(j, self.reply[a:b], []))
            h._emit(Event(j, "", [], finish_reason="stop"))
        h._emit(None)
        return h

    def cancel(self, h):
        self.engine.cancel(h)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa-docs")
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def index_path(docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa-index") / "docs.sqlite"
    code, stdout, stderr = run_cli("index", str(docs), "--out", str(out))
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def server(serve_model_dir, index_path):
    app = create_app(ServeOptions(model_dir=str(serve_model_dir()), served_model_name="tiny", api_key=KEY,
                                  index=str(index_path), index_k=3, max_batch_size=4, threads=1,
                                  engine_process=False))  # fmt: skip
    with LiveServer(app) as srv:
        state = app.app.state.serve
        state.engine = srv.engine = Scripted(state.engine)
        srv.state = state
        yield srv


@pytest.fixture
def scripted(server):
    server.engine.reply, server.engine.prompts[:] = None, []
    yield server.engine
    server.engine.reply = None


def chat(server, **body):
    r = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0,
                         **body})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    return float(re.search(rf"^llmchain:{name}{{[^}}]*}} (\S+)$", text, re.M).group(1))


def source_file_text(docs, source: str) -> str:
    """A source's text read straight from the document on disk (not through the index)."""
    return next(p for p in docs.iterdir() if source.endswith(p.name)).read_text(encoding="utf-8")


def test_prompt_holds_the_passages_and_citations_quote_their_source(server, scripted, docs):
    scripted.reply = "It was 1865 [1], by Whymper's party [1][3]; not [9]."
    dropped = metric(server, "citations_dropped_total")
    sent = metric(server, "citations_total")
    r = chat(server)
    context = r["context"]
    assert 1 <= len(context) <= 3 and [c["index"] for c in context] == list(range(1, len(context) + 1))
    assert context[0]["source"].endswith("alps.txt")  # the passage that answers ranks first
    prompt = server.state.tokenizer.decode(scripted.prompts[-1])
    assert INSTRUCTION in prompt and prompt.index(INSTRUCTION) < prompt.index(QUESTION)
    for c in context:
        assert f"[{c['index']}] ({c['source']}, characters {c['start']}-{c['end']})\n{c['quote']}" in prompt
    cites = r["choices"][0]["citations"]
    assert r["choices"][0]["message"]["content"] == scripted.reply
    assert [c["index"] for c in cites] == [i for i in (1, 3) if i <= len(context)]
    for c in cites:
        assert source_file_text(docs, c["source"])[c["start"] : c["end"]] == c["quote"]
        assert c == {k: v for k, v in context[c["index"] - 1].items() if k != "score"}
    assert metric(server, "citations_total") == sent + len(cites)
    assert metric(server, "citations_dropped_total") == dropped


def test_streamed_answer_carries_citations_in_its_last_chunk(server, scripted, docs):
    scripted.reply = "First climbed in 1865 [1]."
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                                 max_tokens=8, stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == scripted.reply
    assert all("citations" not in (c.choices[0].model_extra or {}) for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    (cite,) = last.choices[0].model_extra["citations"]
    assert cite["index"] == 1 and last.model_extra["context"][0]["passage_id"] == cite["passage_id"]
    assert source_file_text(docs, cite["source"])[cite["start"] : cite["end"]] == cite["quote"]


def test_a_citation_whose_offsets_were_tampered_with_is_dropped(server, scripted, monkeypatch):
    index = server.state.qa.index
    search = index.search

    def shifted(*args, **kwargs):  # the index now claims the first passage starts one character later
        result = search(*args, **kwargs)
        first = result.hits[0]
        first.start, first.end = first.start + 1, first.end + 1
        return result

    monkeypatch.setattr(index, "search", shifted)
    scripted.reply = "Both say so [1] [2]."
    dropped = metric(server, "citations_dropped_total")
    r = chat(server)
    assert [c["index"] for c in r["choices"][0]["citations"]] == [2]
    assert metric(server, "citations_dropped_total") == dropped + 1


def test_retrieval_false_sends_the_messages_as_they_are(server, scripted):
    scripted.reply = "No passages [1]."
    r = chat(server, retrieval=False)
    assert "context" not in r and "citations" not in r["choices"][0]
    assert INSTRUCTION not in server.state.tokenizer.decode(scripted.prompts[-1])


def test_the_real_model_gets_the_passages_and_answers_with_context(server, scripted):
    grounded, plain = chat(server), chat(server, retrieval=False)
    assert grounded["context"] and isinstance(grounded["choices"][0]["citations"], list)
    assert grounded["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20


def test_passage_endpoint_shows_the_passage_in_its_source(server, scripted, docs):
    c = chat(server)["context"][0]
    assert httpx.get(f"{server.url}/v1/passages/{c['passage_id']}").status_code == 401  # needs the key
    p = httpx.get(f"{server.url}/v1/passages/{c['passage_id']}", headers=AUTH).json()
    text = source_file_text(docs, c["source"])
    assert p["text"] == c["quote"] == text[p["start"] : p["end"]]
    assert (
        p["before"] == text[max(p["start"] - 1000, 0) : p["start"]]
        and p["after"] == text[p["end"] : p["end"] + 1000]
    )
    missing = httpx.get(f"{server.url}/v1/passages/999999", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "passage_not_found"


def test_embeddings_through_the_openai_client_equal_the_encoder(server):
    from llmchain.rag.embed import Encoder

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    name = server.state.qa.encoder_name
    assert name in [m.id for m in client.models.list().data]
    texts = ["Black tea is fully oxidised.", "How high is the Matterhorn?", "bees"]
    want = Encoder.load("minilm").encode(texts)
    floats = client.embeddings.create(model=name, input=texts, encoding_format="float")
    b64 = client.embeddings.create(model=name, input=texts)  # the client's default: base64, decoded by it
    assert floats.usage.prompt_tokens == sum(want.n_tokens) == b64.usage.prompt_tokens
    for got in (floats, b64):
        vecs = np.array([d.embedding for d in sorted(got.data, key=lambda d: d.index)], dtype=np.float32)
        assert vecs.shape == want.vectors.shape
        cos = (
            (vecs * want.vectors).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(want.vectors, axis=1)
        )
        assert np.all(cos > 0.9999), cos
    one = client.embeddings.create(model=name, input="bees", encoding_format="float")
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, want.vectors[2], atol=1e-5)


def test_an_input_longer_than_the_encoder_reads_is_cut_and_says_so(server):
    from llmchain.rag.embed import Encoder

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    enc = Encoder.load("minilm")
    long = "The Matterhorn was first climbed in 1865. " * 200  # ~1,800 tokens; MiniLM reads 256
    texts = ["bees", long]
    want = enc.encode(texts)
    assert want.truncated == [False, True]
    before = metric(server, "embedding_inputs_truncated_total")
    for fmt in ({"encoding_format": "float"}, {}):  # {}: the client's default, base64, decoded by it
        got = client.embeddings.create(model=server.state.qa.encoder_name, input=texts, **fmt)
        assert [d.model_extra["truncated"] for d in got.data] == [False, True]
        assert got.usage.prompt_tokens == want.n_tokens[0] + enc.max_tokens  # the tokens it read
        assert np.allclose(got.data[1].embedding, want.vectors[1], atol=1e-5)  # the cut text's vector
    assert metric(server, "embedding_inputs_truncated_total") == before + 2
    r = httpx.post(server.url + "/v1/embeddings", headers=AUTH, json={"input": "word " * 5000}, timeout=60)
    assert r.status_code == 200 and r.json()["data"][0]["truncated"] is True, r.text


def test_embeddings_bounds(server):
    name = server.state.qa.encoder_name
    url = server.url + "/v1/embeddings"
    for body, status, param in (
        ({"model": name, "input": ["x"] * 257}, 400, "input"),
        ({"model": name, "input": []}, 400, "input"),
        ({"model": name, "input": ["ok", ""]}, 400, "input"),
        ({"model": name, "input": [1, 2, 3]}, 400, "input"),
        ({"model": name, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": name, "input": "x", "dimensions": 3}, 400, "dimensions"),
        ({"model": "tiny", "input": "x"}, 404, "model"),
    ):
        r = httpx.post(url, headers=AUTH, json=body, timeout=60)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    assert httpx.post(url, json={"input": "x"}).status_code == 401
    lone = httpx.post(url, headers={**AUTH, "Content-Type": "application/json"}, content=r'{"input": ["\ud800"]}')
    assert lone.status_code == 400 and lone.json()["error"]["param"] == "input"
    for bad in ("-1", str(2**64), "x"):
        assert httpx.get(f"{server.url}/v1/passages/{bad}", headers=AUTH).status_code == 400, bad
    # the index thread's queue is full (max_queue jobs wait): embeddings and grounded chat get 503 at once
    server.state.qa.waiting += 10_000
    try:
        busy = httpx.post(url, headers=AUTH, json={"input": "x"})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert httpx.post(server.url + "/v1/chat/completions", headers=AUTH, json={
            "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}).status_code == 503
    finally:
        server.state.qa.waiting -= 10_000


def test_a_server_without_an_index_is_unchanged(serve_model_dir):
    app = create_app(ServeOptions(model_dir=str(serve_model_dir()), max_batch_size=2, threads=1,
                                  engine_process=False))  # fmt: skip
    with LiveServer(app) as srv:
        for body in ({}, {"retrieval": True}, {"retrieval": False}):
            r = httpx.post(
                srv.url + "/v1/chat/completions",
                timeout=60,
                json={
                    "messages": [{"role": "user", "content": QUESTION}],
                    "max_tokens": 4,
                    "temperature": 0,
                    **body,
                },
            )
            assert r.status_code == 200 and "context" not in r.json(), r.text
            assert "citations" not in r.json()["choices"][0]
        streamed = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "stream": True})  # fmt: skip
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        assert "context" not in streamed.text and "citations" not in streamed.text
        e = httpx.post(srv.url + "/v1/embeddings", json={"input": "x"})
        assert e.status_code == 404 and "--embedding-model" in e.json()["error"]["message"]
        assert httpx.get(srv.url + "/v1/passages/1").status_code == 404
        assert [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]] == ["model"]


def test_embedding_model_without_an_index(serve_model_dir):
    app = create_app(ServeOptions(model_dir=str(serve_model_dir()), max_batch_size=2, threads=1,
                                  engine_process=False, embedding_model="minilm"))  # fmt: skip
    with LiveServer(app) as srv:
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["a", "b"]}, timeout=60).json()
        assert [d["index"] for d in r["data"]] == [0, 1] and r["usage"]["prompt_tokens"] > 0
        chat = httpx.post(
            srv.url + "/v1/chat/completions",
            timeout=60,
            json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4},
        )
        assert chat.status_code == 200 and "context" not in chat.json()


def test_ask_against_a_live_server(server, scripted, index_path, docs):
    scripted.reply = "In 1865 [1]."
    code, out, err = run_cli("ask", str(index_path), QUESTION, "--base-url", server.url + "/v1",
                             "--api-key", KEY, "--k", "2", "--json")  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["answer"] == scripted.reply and len(r["context"]) == 2
    (cite,) = r["citations"]
    assert source_file_text(docs, cite["source"])[cite["start"] : cite["end"]] == cite["quote"]
    # ask built the prompt itself and told our server not to retrieve again: the passages appear once
    prompt = server.state.tokenizer.decode(scripted.prompts[-1])
    assert prompt.count(INSTRUCTION) == 1 and cite["quote"] in prompt
    code, out, err = run_cli(
        "ask", str(index_path), QUESTION, "--base-url", server.url + "/v1", "--api-key", KEY
    )
    assert (
        code == 0 and "Citations:" in out and f"[1] {cite['source']} [{cite['start']}:{cite['end']}]" in out
    )
    code, out, err = run_cli("ask", str(index_path), QUESTION, "--base-url", server.url + "/v1")
    assert code == 2 and "401" in err


def test_ask_with_an_in_process_model(serve_model_dir, index_path, monkeypatch):
    from llmchain.infer.engine import Engine

    prompts = []
    generate = Engine.generate

    def recording(self, ids, params):
        prompts.append(self.tokenizer.decode(ids[0]))
        return generate(self, ids, params)

    monkeypatch.setattr(Engine, "generate", recording)
    code, out, err = run_cli("ask", str(index_path), QUESTION, "--model", str(serve_model_dir()),
                             "--max-tokens", "6", "--json")  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["context"] and isinstance(r["answer"], str) and isinstance(r["citations"], list)
    assert INSTRUCTION in prompts[0] and all(c["quote"] in prompts[0] for c in r["context"])
    code, _, err = run_cli("ask", str(index_path), QUESTION)
    assert code == 2 and "--model" in err
    code, _, err = run_cli("ask", str(index_path), QUESTION, "--model", str(serve_model_dir()), "--mode", "bm25")
    assert code == 2 and "hybrid" in err
    code, _, err = run_cli("ask", str(index_path) + ".missing", QUESTION, "--model", str(serve_model_dir()))
    assert code == 2 and "no such index" in err


def test_chat_page_shows_citation_links_that_open_the_passage(server, scripted, browser, docs):
    scripted.reply = "It was 1865 [1], says the second passage too [2]."
    page = browser.new_page()
    page.goto(server.url + "/")
    page.click("#settings summary")
    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    page.fill("#max_tokens", "8")  # room for all three passages in the tiny model's 512-token context
    page.fill("#input", QUESTION)
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-streaming='false']", timeout=60_000)
    assert page.inner_text(".msg.assistant .content") == scripted.reply
    links = page.query_selector_all(".msg.assistant a.citation")
    assert [link.inner_text().split()[0] for link in links] == ["[1]", "[2]"]
    links[0].click()
    page.wait_for_selector("#passage[open]")
    page.wait_for_function("document.getElementById('passage-after').textContent.length > 0 || "
                           "document.getElementById('passage-before').textContent.length > 0")  # fmt: skip
    source, quote = page.inner_text("#passage-source"), page.inner_text("#passage-text")
    m = re.fullmatch(r"\[1\] (\S+), characters (\d+)-(\d+)", source)
    assert m, source
    start, end = int(m.group(2)), int(m.group(3))
    text = source_file_text(docs, m.group(1))
    assert quote == text[start:end] and "1865" in quote
    before_after = page.inner_text("#passage-before") + quote + page.inner_text("#passage-after")
    assert before_after.strip("…").strip() in text
    page.click("#passage-close")
    assert page.query_selector("#passage[open]") is None
    page.close()


def test_serve_refuses_a_missing_index_before_starting(serve_model_dir, tmp_path):
    code, _, err = run_cli("serve", str(serve_model_dir()), "--index", str(tmp_path / "none.sqlite"))
    assert code == 2 and "--index: file not found" in err
