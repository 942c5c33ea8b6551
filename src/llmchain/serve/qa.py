"""Question answering on the server (`llmchain serve --index INDEX`, `--embedding-model`, docs/qa.md):
POST /v1/embeddings, GET /v1/passages/{id}, and the retrieval that grounds a chat request.

`QA` holds the index and the encoder. They work on one thread of their own, off the event loop:
encoding is CPU-bound and the index serialises on its one lock anyway; `QA.waiting` bounds the jobs
queued for that thread as max_queue bounds the engine's. `add_qa_routes(app, state)` registers the two
endpoints; the chat endpoint (serve/api.py) calls `QA.ground` and `grounded_prompt`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import Path as PathParam

from llmchain.serve.protocol import APIError, EmbeddingRequest, Grounding


class QA:
    """The index (`--index`) and the encoder (`--embedding-model`, else the index's own) of a server."""

    def __init__(self, opts, metrics):
        self.opts, self.metrics = opts, metrics
        self.index = self.encoder = self.encoder_name = None
        wanted = bool(opts.index or opts.embedding_model)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmchain-rag") if wanted else None
        self.waiting = 0

    def load(self) -> None:
        """Open the index and load the encoder, on their thread (first: once /health says ok, every chat
        request gets its passages)."""
        if self.pool is not None:
            self.pool.submit(self._load).result()

    def _load(self) -> None:
        from llmchain.rag.embed import Encoder
        from llmchain.rag.index import Index

        o = self.opts
        if o.index:
            self.index = Index.open(o.index)
        if o.embedding_model:
            self.encoder = Encoder.load(o.embedding_model, device=o.device)
        elif self.index is not None:
            self.encoder = self.index.encoder  # the one that embeds queries, loaded now (not by a request)
        if self.encoder is not None:  # named, never located: an encoder dir's name is its absolute path
            self.encoder_name = Path(self.encoder.name).name

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn, *args):
        """`fn(*args)` on the index/encoder thread; 503 when max_queue jobs already wait for it."""
        if self.waiting >= max(self.opts.max_queue, 1):
            raise APIError(503, "server overloaded: too many retrieval / embedding requests waiting",
                           code="overloaded")  # fmt: skip
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.waiting -= 1

    def check_encoder(self, model: str | None) -> None:
        if self.encoder is None:
            raise APIError(404, "this server has no embedding model: start it with --embedding-model "
                                "minilm|DIR (or --index INDEX)", "model", "model_not_found")  # fmt: skip
        if model is not None and model != self.encoder_name:
            raise APIError(404, f"the model {model!r} does not exist; this server embeds with "
                                f"{self.encoder_name!r}", "model", "model_not_found")  # fmt: skip

    async def ground(self, messages: list[dict]) -> Grounding | None:
        """The index's passages for a chat request's last user message; None without an index or without
        a user message to search for."""
        from llmchain.rag.answer import last_user_text

        if self.index is None:
            return None
        query = last_user_text(messages)
        if query is None:
            return None
        return await self.run(self.retrieve, query, self.opts.index_k)

    def retrieve(self, query: str, k: int) -> Grounding:
        """The index thread's part of a grounded chat request: the k best passages, each checked."""
        from llmchain.rag.answer import verify

        t0 = time.perf_counter()
        hits = self.index.search(query, k=k, mode="hybrid").hits
        verified = verify(hits, self.index.source_text)
        self.metrics.on_retrieval(time.perf_counter() - t0)
        return Grounding(hits, verified, self.metrics.on_citations)

    def passage(self, passage_id: int) -> dict | None:
        """GET /v1/passages/{id} (on the index thread): the passage and up to passage_context_chars of its
        source on each side, or None for an id the index does not hold."""
        hit = self.index.passage(passage_id)
        if hit is None:
            return None
        text, c = self.index.source_text(hit.source), self.opts.passage_context_chars
        return {"object": "passage", "passage_id": hit.passage_id, "source": hit.source, "start": hit.start,
                "end": hit.end, "text": text[hit.start : hit.end],
                "before": text[max(hit.start - c, 0) : hit.start], "after": text[hit.end : hit.end + c]}  # fmt: skip


def grounded_prompt(grounding: Grounding, messages: list[dict], ids: Callable[[list[dict]], list[int]],
                    room: int) -> list[int]:  # fmt: skip
    """The prompt's token ids (`ids(messages)`) with as many of the grounding's best-ranked passages in
    front as keep it within `room` tokens; the rest are dropped from `grounding` too, so citations number
    only what the model saw."""
    from llmchain.rag.answer import fit_passages, grounded_messages

    kept = fit_passages(grounding.hits, lambda hs: len(ids(grounded_messages(messages, hs))) <= room)
    grounding.verified = grounding.verified[: len(kept)]
    grounding.hits = kept
    return ids(grounded_messages(messages, kept))


def add_qa_routes(app, state) -> None:
    """Register POST /v1/embeddings and GET /v1/passages/{id} on the server's app (`state.qa`)."""
    qa: QA = state.qa

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        import base64

        import numpy as np

        state.check_loaded()
        qa.check_encoder(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        limit = state.opts.max_embedding_inputs
        if any(not isinstance(t, str) for t in texts):
            raise APIError(400, "input: token ids are not accepted; send a text or a list of texts", "input")
        if not texts or len(texts) > limit or any(not t for t in texts):
            raise APIError(400, f"input must hold 1 to {limit} non-empty texts", "input")
        enc = qa.encoder
        if body.dimensions is not None and body.dimensions != enc.dim:
            raise APIError(400, f"dimensions: {qa.encoder_name!r} embeds in {enc.dim} dimensions only",
                           "dimensions")  # fmt: skip
        out = await qa.run(enc.encode, texts)
        qa.metrics.on_embedded(len(texts), sum(out.truncated))
        vectors = np.asarray(out.vectors, dtype="<f4")  # base64: little-endian float32, as OpenAI's clients read
        # A text longer than the encoder reads is embedded cut to its limit, as the index and search embed
        # theirs, and its item says so (`truncated`, as /v1/explain's): OpenAI refuses such a text instead.
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64"
                 else v.tolist(), "truncated": cut}
                for i, (v, cut) in enumerate(zip(vectors, out.truncated, strict=True))]  # fmt: skip
        n = int(sum(out.n_tokens))
        usage = {"prompt_tokens": n, "total_tokens": n}
        return {"object": "list", "data": data, "model": qa.encoder_name, "usage": usage}

    @app.get("/v1/passages/{passage_id}")
    async def passage(passage_id: int = PathParam(..., ge=0, lt=2**63)):  # SQLite's integer range
        state.check(None, kind="any")
        if qa.index is None:
            raise APIError(404, "this server has no index (start it with --index INDEX)", code="no_index")
        found = await qa.run(qa.passage, passage_id)
        if found is None:
            raise APIError(404, f"no passage {passage_id} in the index", "passage_id", "passage_not_found")
        return found
