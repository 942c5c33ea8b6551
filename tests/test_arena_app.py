"""The arena's API and store: battles stream two anonymous answers, votes are validated server-side and
written once, 20 concurrent voters lose nothing, the schema is versioned."""

from __future__ import annotations

import json
import sqlite3
import threading

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from llmchain.arena.app import ArenaSampling, create_app
from llmchain.arena.backends import EngineBackend, OpenAIBackend
from llmchain.arena.store import SCHEMA_VERSION, ArenaStore
from llmchain.errors import UserError
from serve_fixtures import LiveServer, free_port, make_model_dir

REPLIES = {"fast": "Short answer.", "slow": "A much longer answer that goes on for a while, word by word."}


def fake_openai() -> FastAPI:
    """An OpenAI-compatible server with two models whose streamed replies are fixed texts."""
    app = FastAPI()
    seen: list[dict] = []
    app.state.seen = seen

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in REPLIES]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        seen.append(body)
        reply = REPLIES[body["model"]]

        async def gen():
            for word in reply.split(" "):
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def remote():
    app = fake_openai()
    with LiveServer(app) as srv:
        srv.seen = app.state.seen
        yield srv


def _arena(tmp_path, backends, **kw):
    store = ArenaStore(tmp_path / "arena.sqlite")
    store.register_models({n: b.source for n, b in backends.items()})
    return store, create_app(backends, store, **kw)


def _remote_backends(remote) -> dict:
    return {m: OpenAIBackend(m, f"{remote.url}#{m}") for m in REPLIES}


def battle(client: httpx.Client, prompt: str = "Say something.") -> tuple[str, list[dict]]:
    events = []
    with client.stream("POST", "/api/battles", json={"prompt": prompt}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events[0]["battle_id"], events


def test_battle_streams_anonymous_answers_and_the_vote_reveals_the_names(tmp_path, remote):
    store, app = _arena(tmp_path, _remote_backends(remote), sampling=ArenaSampling(max_tokens=32, temperature=0.5))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        bid, events = battle(c, "Hello there")
        raw = json.dumps(events)
        assert "fast" not in raw and "slow" not in raw  # no name before the vote
        assert events[-1] == {"ready": True}
        texts = {s: "".join(e.get("text", "") for e in events if e.get("side") == s) for s in "ab"}
        assert sorted(t.strip() for t in texts.values()) == sorted(REPLIES.values())
        assert len(bid) >= 24  # unguessable: 18 random bytes
        r = c.post("/api/votes", json={"battle_id": bid, "winner": "b"})
        assert r.status_code == 200
        names = r.json()
        assert {names["model_a"], names["model_b"]} == set(REPLIES)
        assert texts["a"].strip() == REPLIES[names["model_a"]]  # side a's text is model_a's
        board = c.get("/api/leaderboard").json()
        assert board["votes"] == 1 and board["rows"][0]["model"] == names["model_b"]
    b = store.battle(bid)
    assert b.prompt == "Hello there" and b.state == "ready"
    assert b.answer_a.strip() == REPLIES[b.model_a] and b.answer_b.strip() == REPLIES[b.model_b]
    assert b.sampling["max_tokens"] == 32 and b.sampling["temperature"] == 0.5 and isinstance(b.sampling["seed"], int)
    assert b.timing["a"]["total_ms"] > 0 and b.timing["b"]["tokens"] > 0
    sent = remote.seen[-1]  # the remote got the stored settings
    assert sent["max_tokens"] == 32 and sent["temperature"] == 0.5 and sent["seed"] == b.sampling["seed"]
    assert sent["messages"] == [{"role": "user", "content": "Hello there"}]
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT winner FROM votes").fetchall() == [("b",)]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_bad_votes_are_4xx_and_write_nothing(tmp_path, remote):
    store, app = _arena(tmp_path, _remote_backends(remote), sampling=ArenaSampling(max_tokens=8))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        bid, _ = battle(c)
        assert c.post("/api/votes", json={"battle_id": bid, "winner": "a"}).status_code == 200
        before = store.counts()
        cases = [
            ({"battle_id": "no-such-battle", "winner": "a"}, 404),  # unknown battle
            ({"battle_id": bid, "winner": "b"}, 409),  # a second vote on the same battle
            ({"battle_id": bid, "winner": "fast"}, 422),  # a model name instead of a side
            ({"battle_id": bid, "winner": "a", "model_a": "slow"}, 422),  # a forged model id
            ({"battle_id": bid}, 422),
            ({"battle_id": "x" * 500, "winner": "a"}, 422),
        ]
        for body, status in cases:
            r = c.post("/api/votes", json=body)
            assert r.status_code == status, (body, r.text)
        # a battle still streaming (created, not finished) cannot be voted on
        store.create_battle("pending-battle", "p", "typed", "fast", "slow", {"max_tokens": 8})
        assert c.post("/api/votes", json={"battle_id": "pending-battle", "winner": "a"}).status_code == 409
        # a prompt claimed to come from the prompt file that is not in it
        assert c.post("/api/battles", json={"prompt": "x", "from_file": True}).status_code == 422
        assert c.post("/api/battles", json={"prompt": ""}).status_code == 422
        assert c.post("/api/battles", json={"prompt": "x", "model_a": "fast"}).status_code == 422  # no choosing
        assert c.get("/api/prompt").status_code == 404  # no prompt file
    after = store.counts()
    assert after["votes"] == before["votes"] == 1
    assert after["battles"] == before["battles"] + 1  # only the pending one made above


def test_twenty_concurrent_voters_lose_no_vote(tmp_path, remote):
    store, app = _arena(tmp_path, _remote_backends(remote), sampling=ArenaSampling(max_tokens=8))
    with LiveServer(app) as srv:
        ids: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(20)

        def client(i: int) -> None:
            try:
                with httpx.Client(base_url=srv.url, timeout=120) as c:
                    bid, _ = battle(c, f"prompt {i}")
                    start.wait()  # every client votes at the same moment
                    r = c.post("/api/votes", json={"battle_id": bid, "winner": "abab"[i % 4] if i % 5 else "tie"})
                    if r.status_code != 200:
                        errors.append(r.text)
                    with lock:
                        ids.append(bid)
            except Exception as e:  # surfaced below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert httpx.get(srv.url + "/api/leaderboard").json()["votes"] == 20
    assert len(set(ids)) == 20
    assert store.counts()["votes"] == 20 and len(store.votes()) == 20


def test_store_concurrent_writers_with_their_own_connections(tmp_path):
    """Twenty threads, each its own ArenaStore on the same file, vote at once: SQLite's lock queues them."""
    path = tmp_path / "a.sqlite"
    store = ArenaStore(path)
    store.register_models({"x": "/m/x", "y": "/m/y"})
    for i in range(20):
        store.create_battle(f"b{i}", f"p{i}", "typed", "x", "y", {})
        store.finish_battle(f"b{i}", ("ax", "ay"), ("stop", "stop"), {"a": {}, "b": {}})
    start, fails = threading.Barrier(20), []

    def vote(i):
        s = ArenaStore(path)
        start.wait()
        try:
            s.record_vote(f"b{i}", "a")
            s.record_vote(f"b{i}", "b")  # the second one must fail
            fails.append(f"b{i}: second vote accepted")
        except ValueError:
            pass

    threads = [threading.Thread(target=vote, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not fails
    assert [v.winner for v in store.votes()] == ["a"] * 20


def test_in_process_engine_against_a_remote_model(tmp_path, remote):
    model_dir = make_model_dir(tmp_path / "tiny", None, seed=1)
    backends = {"ours": EngineBackend("ours", model_dir), "fast": OpenAIBackend("fast", f"{remote.url}/v1#fast")}
    store, app = _arena(tmp_path, backends, sampling=ArenaSampling(max_tokens=12, temperature=0.0))
    try:
        with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            bid, events = battle(c, "To be or not")
            assert events[-1] == {"ready": True}
        b = store.battle(bid)
        ours = "a" if b.model_a == "ours" else "b"
        assert b.timing[ours]["tokens"] >= 1 and (b.answer_a if ours == "a" else b.answer_b)
        # the same settings (greedy, seed stored) give the same answer through the engine directly
        from llmchain.infer.sampling import SamplingParams

        eng = backends["ours"].engine
        again = eng.generate([backends["ours"].encode("To be or not")],
                             SamplingParams(max_tokens=12, temperature=0.0))[0][0].text  # fmt: skip
        assert again == (b.answer_a if ours == "a" else b.answer_b)
    finally:
        backends["ours"].close()


def test_a_failing_model_makes_the_battle_unvotable(tmp_path, remote):
    dead = f"http://127.0.0.1:{free_port()}#gone"  # nothing listens there
    backends = {"fast": OpenAIBackend("fast", f"{remote.url}#fast"), "gone": OpenAIBackend("gone", dead)}
    store, app = _arena(tmp_path, backends, sampling=ArenaSampling(max_tokens=8))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        bid, events = battle(c)
        assert events[-1] == {"ready": False}
        assert any(e.get("error") for e in events)
        assert c.post("/api/votes", json={"battle_id": bid, "winner": "a"}).status_code == 409
    assert store.battle(bid).state == "failed" and store.counts()["votes"] == 0


def test_schema_is_versioned_and_foreign_files_are_refused(tmp_path):
    p = tmp_path / "new.sqlite"
    ArenaStore(p)
    with sqlite3.connect(p) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="newer llmchain"):
        ArenaStore(p)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError, match="not an arena database"):
        ArenaStore(junk)
    s = ArenaStore(tmp_path / "ok.sqlite")
    s.register_models({"m": "/models/one"})
    s.register_models({"m": "/models/one"})  # the same again: fine
    with pytest.raises(UserError, match="stands for /models/one"):
        s.register_models({"m": "/models/two"})
