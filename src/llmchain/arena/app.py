"""The arena's web app: a page, a battle endpoint streaming two anonymous answers, votes, a leaderboard.

    POST /api/battles {prompt, from_file}   → SSE: {"battle_id"}, {"side", "text"}…, {"side", "done"}…, {"ready"}
    POST /api/votes   {battle_id, winner}   → {"model_a", "model_b"} (the names, revealed only now)
    GET  /api/leaderboard                    → ratings with bootstrap intervals
    GET  /api/prompt                         → a prompt drawn from --prompts

Every check of a vote happens here and in the store's transaction: the page only sends the battle's
id (unguessable) and a / b / tie / both_bad; the models and answers come from the database, so a
client can neither choose nor forge them. Unknown battle → 404, second vote or an unfinished battle
→ 409, anything else malformed (extra fields such as a model name included) → 422; nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from llmchain.arena.ratings import leaderboard
from llmchain.arena.store import ArenaStore, BattleNotFound, VoteRejected

STATIC = Path(__file__).parent / "static"


@dataclass
class ArenaSampling:
    """The settings both sides of every battle run with (stored with each battle)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh seed per battle, the same for both sides (stored)


class BattleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=16_000)
    from_file: bool = False


class VoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    battle_id: str = Field(min_length=1, max_length=64)
    winner: Literal["a", "b", "tie", "both_bad"]


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def create_app(backends: dict, store: ArenaStore, prompts: list[str] | None = None,
               sampling: ArenaSampling | None = None, bootstrap: int = 100) -> FastAPI:  # fmt: skip
    """The arena over `backends` (name → EngineBackend / OpenAIBackend, at least two)."""
    if len(backends) < 2:
        raise ValueError("an arena needs at least two models")
    sampling = sampling or ArenaSampling()
    prompts = list(prompts or [])
    prompt_set = set(prompts)
    names = sorted(backends)
    rng = random.SystemRandom()  # which pair, which side: not predictable from earlier battles
    cache: dict = {"key": None, "value": None}
    cache_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app):
        yield
        for b in backends.values():
            b.close()

    app = FastAPI(title="llmchain arena", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(names)}

    @app.get("/api/info")
    async def info():
        return {"models": len(names), "prompts": len(prompts), "sampling": asdict(sampling)}

    @app.get("/api/prompt")
    async def prompt():
        if not prompts:
            raise HTTPException(404, "no prompt file (start the arena with --prompts FILE)")
        return {"prompt": rng.choice(prompts)}

    @app.post("/api/battles")
    async def battle(body: BattleRequest):
        if body.from_file and body.prompt not in prompt_set:
            raise HTTPException(422, "from_file is set but the prompt is not in the prompt file")
        model_a, model_b = rng.sample(names, 2)
        battle_id = secrets.token_urlsafe(18)
        seed = sampling.seed if sampling.seed is not None else secrets.randbelow(2**31)
        settings = {**asdict(sampling), "seed": seed}
        await asyncio.to_thread(store.create_battle, battle_id, body.prompt, "file" if body.from_file else "typed",
                                model_a, model_b, settings)  # fmt: skip
        return StreamingResponse(_run_battle(battle_id, body.prompt, (backends[model_a], backends[model_b]),
                                             settings, store), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.post("/api/votes")
    async def vote(body: VoteRequest):
        try:
            battle = await asyncio.to_thread(store.record_vote, body.battle_id, body.winner)
        except BattleNotFound:
            raise HTTPException(404, "unknown battle") from None
        except VoteRejected as e:
            raise HTTPException(409, str(e)) from None
        return {"battle_id": battle.id, "winner": body.winner, "model_a": battle.model_a, "model_b": battle.model_b}

    def _board() -> dict:
        votes = store.votes()
        with cache_lock:
            if cache["key"] == len(votes):
                return cache["value"]
            if len({v.model_a for v in votes} | {v.model_b for v in votes}) < 2:
                value = {"votes": len(votes), "rows": []}
            else:
                lb = leaderboard(votes, bootstrap=bootstrap)
                value = {"votes": len(votes), "rows": lb.rows(), "bootstrap": bootstrap}
            cache.update(key=len(votes), value=value)
            return value

    @app.get("/api/leaderboard")
    async def board():
        return await asyncio.to_thread(_board)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/sse.js", include_in_schema=False)
    async def sse_reader():  # the chat page's event-stream reader, one copy for both pages
        return FileResponse(STATIC.parent.parent / "serve" / "static" / "sse.js", media_type="text/javascript")

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return JSONResponse({"error": {"message": e.detail, "status": e.status_code}}, status_code=e.status_code)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _run_battle(battle_id: str, prompt: str, sides: tuple, settings: dict, store: ArenaStore):
    """Both answers at once, their deltas interleaved as they come; the battle is stored when both end."""
    from llmchain.infer.sampling import SamplingParams

    params = SamplingParams(max_tokens=settings["max_tokens"], temperature=settings["temperature"],
                            top_p=settings["top_p"], seed=settings["seed"])  # fmt: skip
    queue: asyncio.Queue = asyncio.Queue()
    results: dict[str, dict] = {}
    t0 = time.perf_counter()

    async def pump(side: str, backend) -> None:
        text, tokens, first, finish, error = [], 0, None, None, None
        try:
            async for d in backend.stream(prompt, params):
                if d.text and first is None:
                    first = time.perf_counter()
                text.append(d.text)
                tokens += d.tokens
                finish = d.finish_reason or finish
                if d.text:
                    await queue.put({"side": side, "text": d.text})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # this side failed (remote down, prompt too long): say so on its side
            error = str(e) or type(e).__name__
        end = time.perf_counter()
        results[side] = {"text": "".join(text), "finish": "error" if error else (finish or "stop"), "error": error,
                         "timing": {"ttft_ms": round(((first or end) - t0) * 1e3, 1),
                                    "total_ms": round((end - t0) * 1e3, 1), "tokens": tokens}}  # fmt: skip
        await queue.put({"side": side, "done": True, "finish_reason": results[side]["finish"], "error": error})

    yield _sse({"battle_id": battle_id})
    tasks = [asyncio.create_task(pump(side, b)) for side, b in zip("ab", sides, strict=True)]
    try:
        done = 0
        while done < 2:
            ev = await queue.get()
            done += bool(ev.get("done"))
            yield _sse(ev)
        a, b = results["a"], results["b"]
        failed = bool(a["error"] or b["error"])
        timing = {"a": a["timing"], "b": b["timing"], "finished_at": time.time()}
        await asyncio.to_thread(store.finish_battle, battle_id, (a["text"], b["text"]), (a["finish"], b["finish"]),
                                timing, failed)  # fmt: skip
        yield _sse({"ready": not failed})
    finally:
        for t in tasks:  # the page went away: stop both answers (the battle stays unfinished, unvotable)
            t.cancel()
