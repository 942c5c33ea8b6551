"""The OpenAI-compatible HTTP server (FastAPI): completions, chat, SSE streaming, auth, limits, metrics, chat page.

`create_app(ServeOptions(...))` loads the model in the background (GET /health answers 503 until
it is ready) and runs an `Engine`. Errors use OpenAI's shape. Clients that go away — streaming or
not — have their sequences cancelled so their KV slots are freed at once. Question answering
(--index / --embedding-model: /v1/embeddings, /v1/passages, the chat requests' retrieval) is serve/qa.py.

Hardening (docs/serving-security.md): no client input gets a 5xx; error bodies carry our own
messages, never an exception's text or a file path (those go to the server log); the model is named,
never located; with an API key, only the chat page, its static files and /health are public.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmchain.config import ServeConfig
from llmchain.infer.requests import EngineOverloaded, Event, PromptTooLong, RequestHandle
from llmchain.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    Formatter,
    Grounding,
    printable,
)
from llmchain.serve.qa import QA, add_qa_routes, grounded_prompt

log = logging.getLogger("llmchain.serve")
STATIC = Path(__file__).parent / "static"
# What answers without the API key: the chat page (it asks for the key itself), its files, the health
# check a load balancer polls. Everything else — /v1/*, /docs, /openapi.json, unknown paths — needs it.
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")


class ServeOptions(ServeConfig):
    """What `create_app` serves: a model dir plus the serve options, each defined (with its default) once,
    in config.py's ServeConfig. `host` and `port` are the CLI's; the app ignores them."""

    model_dir: str
    engine_process: bool = True  # run the engine in a child process (off the event loop's GIL)


class State:
    """What the endpoints share: the loaded engine (or why it is not there yet)."""

    def __init__(self, opts: ServeOptions):
        from llmchain.serve.metrics import ServeMetrics

        self.opts = opts
        self.name = opts.served_model_name or Path(opts.model_dir).resolve().name
        self.engine = self.tokenizer = self.classifier = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.metrics = ServeMetrics(self.name)
        self.token_text: dict[int, str] = {}  # token id → its text, for logprobs
        self.qa = QA(opts, self.metrics)  # --index / --embedding-model (serve/qa.py)

    def load(self) -> None:
        try:
            self._load()
            gc.collect()  # what is loaded now stays: keep the collector from re-walking it (worker.py)
            gc.freeze()
        except Exception as e:  # logged; the server answers 503 without the why (it may hold paths)
            log.exception("loading %s failed", self.opts.model_dir)
            self.load_error = f"{type(e).__name__}: {e}"

    def _load(self) -> None:
        self.qa.load()  # first: once /health says ok, every chat request gets its passages
        cfg = json.loads((Path(self.opts.model_dir) / "config.json").read_text(encoding="utf-8"))
        if cfg.get("id2label") and any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", [])):
            from llmchain.model.classifier import load_classifier

            self.classifier = load_classifier(self.opts.model_dir)
            return
        from llmchain.serve.worker import EngineProcess, EngineSpec, build_engine, load_tokenizer

        o = self.opts
        spec = EngineSpec.from_options(o)
        if o.engine_process:  # the engine in its own process (serve/worker.py), as `llmchain serve` runs it
            tok, engine = load_tokenizer(spec), EngineProcess(spec, self.metrics)
        else:
            tok, engine = build_engine(spec, self.metrics)
        self.metrics.gauges = lambda: {
            "num_requests_running": engine.num_running,
            "num_requests_waiting": engine.num_waiting,
            "kv_cache_usage_perc": engine.slots_used / engine.max_batch_size,
            "kv_slots_used": engine.slots_used,
            "kv_slots_total": engine.max_batch_size,
        }
        self.tokenizer, self.engine = tok, engine.start()

    @property
    def ready(self) -> bool:
        return self.engine is not None or self.classifier is not None

    def check_loaded(self) -> None:
        """503 until the model (and the index/encoder) loaded, or for good when loading failed."""
        if self.load_error:
            raise APIError(503, "the model failed to load (the server's log says why)",
                           code="model_load_failed")  # fmt: skip
        if not self.ready:
            raise APIError(503, "the model is still loading; retry shortly", code="loading")

    def check(self, model: str | None, kind: str = "generate") -> None:
        self.check_loaded()
        if self.engine is not None and self.engine.error is not None:
            raise APIError(503, "the engine has failed (the server's log says why)", code="engine_failed")
        if model is not None and model != self.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.name!r}",
                           "model", "model_not_found")  # fmt: skip
        if kind == "generate" and self.engine is None:
            raise APIError(400, f"{self.name!r} is a classifier: use POST /v1/classify", "model")
        if kind == "classify" and self.classifier is None:
            raise APIError(400, f"{self.name!r} is not a classifier (needs id2label and a "
                                "*ForSequenceClassification architecture)", "model")  # fmt: skip


def _error(e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class Guard:
    """Pure-ASGI gate in front of the app: the Bearer API key (on all but PUBLIC_PATHS, /static/ and, if
    `public_metrics`, /metrics), then the request body size limit — before the app reads a byte of it."""

    def __init__(self, app, max_body: int, api_key: str | None, public_metrics: bool = False):
        self.app, self.max_body, self.api_key = app, max_body, api_key
        self.public = PUBLIC_PATHS + (("/metrics",) if public_metrics else ())

    def _needs_key(self, path: str) -> bool:
        return bool(self.api_key) and path not in self.public and not path.startswith("/static/")

    async def _reply(self, scope, receive, send, e: APIError) -> None:
        await _error(e)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self._needs_key(scope["path"]):
            auth = headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return await self._reply(scope, receive, send, APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                                        code="invalid_api_key"))  # fmt: skip
        length = headers.get("content-length")
        too_big = APIError(413, f"request body larger than {self.max_body} bytes", code="request_too_large")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                return await self._reply(scope, receive, send, too_big)
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, total, more = [], 0, True  # chunked upload: read it here, within the limit, then replay
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_body:
                return await self._reply(scope, receive, send, too_big)
            more = msg.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(opts: ServeOptions, load_in_background: bool = True) -> Guard:
    """The ASGI app (FastAPI behind the size/auth guard). The model loads when the app starts."""
    from contextlib import asynccontextmanager

    state = State(opts)

    @asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            threading.Thread(target=state.load, daemon=True, name="llmchain-load").start()
        else:
            state.load()
        yield
        if state.engine is not None:
            state.engine.stop()
        state.qa.shutdown()

    app = FastAPI(title="llmchain", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API of an llmchain model.")  # fmt: skip
    app.state.serve = state

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return _error(_validation_error(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return _error(APIError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):  # a bug of ours: the details go to the log, not the client
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": {"message": "internal error (the server's log has the details)",
                                       "type": "server_error", "param": None, "code": None}},
                            status_code=500)  # fmt: skip

    @app.get("/health")
    async def health():  # public (a load balancer polls it): a status, never the error's text
        if state.load_error or (state.engine is not None and state.engine.error is not None):
            return JSONResponse({"status": "failed"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        # the name only: where the model lives on the server's disk is none of the client's business
        card = {"id": state.name, "object": "model", "created": state.created, "owned_by": "llmchain",
                "root": state.name}  # fmt: skip
        if state.engine is not None:
            card["max_model_len"] = state.engine.max_model_len
        cards = [card]
        if state.qa.encoder is not None:  # /v1/embeddings' model
            name = state.qa.encoder_name
            cards.append({"id": name, "object": "model", "created": state.created, "owned_by": "llmchain",
                          "root": name})  # fmt: skip
        return {"object": "list", "data": cards}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check(body.model)
        prompts = _prompt_ids(state, body.prompt)
        params = _params(body, body.max_tokens, body.logprobs)
        texts = [state.tokenizer.decode(p) if body.echo else "" for p in prompts]
        return await _respond(state, request, "text_completion", prompts, params, body, echo=texts)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        state.check(body.model)
        tok = state.tokenizer
        if not tok.chat_template:
            raise APIError(400, f"the model {state.name!r} has no chat template (tokenizer_config.json "
                                "'chat_template'): use /v1/completions, or start the server with "
                                "--chat-template FILE", "messages", "no_chat_template")  # fmt: skip
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens
        grounding = await state.qa.ground(messages) if body.retrieval else None
        prompt = _chat_prompt(state, messages, grounding, max_tokens)
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, max_tokens, top)
        return await _respond(state, request, "chat.completion", [prompt], params, body, grounding=grounding)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        state.check(body.model, kind="classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > 256:
            raise APIError(400, "input must hold 1 to 256 texts", "input")
        preds = await asyncio.to_thread(state.classifier.predict, texts)
        data = [{"index": i, "label": p["label"], "scores": p["scores"]} for i, p in enumerate(preds)]
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "model": state.name, "data": data}

    from llmchain.explain.service import add_explain_route  # POST /v1/explain (docs/explain.md)

    add_explain_route(app, state, APIError)
    add_qa_routes(app, state)  # POST /v1/embeddings, GET /v1/passages/{id} (serve/qa.py)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, opts.max_body_bytes, opts.api_key, opts.public_metrics)


def _validation_error(errors: list) -> APIError:
    """pydantic's first complaint as a 400 naming the field (its message, never the input it quotes)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        msg = "must be a JSON object (Content-Type: application/json)"
    return APIError(400, f"{'.'.join(loc) or 'body'}: {msg}", loc[0] if loc else None)


def _template_error(e: Exception) -> APIError:
    """A 400 for a conversation the chat template refuses. A template's own `raise_exception('...')`
    (a plain jinja2 TemplateError, e.g. "roles must alternate") is meant for the user and is passed on;
    anything else is an exception's text, which goes to the log only."""
    from jinja2 import TemplateError

    if type(e) is TemplateError:
        return APIError(400, f"the chat template rejected the messages: {printable(str(e), 300)}", "messages")
    log.warning("the chat template failed on a request: %s: %s", type(e).__name__, e)
    return APIError(400, "the chat template could not render these messages", "messages")


def _chat_prompt(state: State, messages: list[dict], grounding: Grounding | None,
                 max_tokens: int | None) -> list[int]:  # fmt: skip
    """The chat template's token ids for `messages`, with the grounding's passages in front: as many of the
    best-ranked as leave room for the answer (max_tokens, at most a quarter of the context); the rest are
    dropped from `grounding` too, so citations number only what the model saw."""
    tok = state.tokenizer

    def ids(msgs):
        try:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:
            raise _template_error(e) from None
        return tok.encode(text, add_special_tokens=False)

    if grounding is None or not grounding.hits:
        return ids(messages)
    context = state.engine.max_model_len
    return grounded_prompt(grounding, messages, ids, context - min(max_tokens or 256, context // 4))


def _prompt_ids(state: State, prompt) -> list[list[int]]:
    tok = state.tokenizer
    if isinstance(prompt, str):
        prompts = [tok.encode(prompt)]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = [tok.encode(p) for p in prompt]
    else:
        prompts = [list(p) for p in prompt]
    if not prompts or len(prompts) > 64 or any(not p for p in prompts):
        raise APIError(400, "prompt must be 1 to 64 non-empty prompts", "prompt")
    vocab = state.engine.config.vocab_size
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
    return prompts


def _params(body, max_tokens, logprobs):
    try:
        return body.sampling(max_tokens, logprobs)
    except ValueError as e:
        raise APIError(400, str(e), str(e).split()[0]) from None


async def _respond(state: State, request: Request, kind: str, prompts, params, body, echo=None,
                   grounding: Grounding | None = None):  # fmt: skip
    engine, loop = state.engine, asyncio.get_running_loop()
    handles: list[RequestHandle] = []
    try:
        for p in prompts:
            handles.append(engine.submit(p, params, loop))
    except (EngineOverloaded, PromptTooLong, ValueError, RuntimeError) as e:
        for h in handles:
            engine.cancel(h)
        if isinstance(e, EngineOverloaded):
            raise APIError(503, f"server overloaded: {e}", code="overloaded") from None
        if isinstance(e, RuntimeError):  # the engine failed between state.check and submit
            raise APIError(503, "the engine has failed (the server's log says why)",
                           code="engine_failed") from None  # fmt: skip
        if isinstance(e, PromptTooLong):
            raise APIError(413, str(e), "prompt" if kind == "text_completion" else "messages",
                           "context_length_exceeded") from None  # fmt: skip
        raise APIError(400, str(e)) from None
    fmt = Formatter(state, kind, params, handles, echo or [""] * len(handles), grounding)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(engine, handles, fmt, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    collect = asyncio.ensure_future(_collect(handles))
    gone = False
    try:
        while not collect.done():
            await asyncio.wait({collect}, timeout=0.25)
            if not collect.done() and await request.is_disconnected():
                gone = True
                break
    finally:
        if gone or not collect.done():  # the client left (or we were cancelled): stop generating
            collect.cancel()
            for h in handles:
                engine.cancel(h)
    if gone:
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    return fmt.full(collect.result())


async def _collect(handles: list[RequestHandle]) -> list[list[Event]]:
    async def one(h):
        return [e async for e in h.events()]

    return list(await asyncio.gather(*(one(h) for h in handles)))


async def _merged(handles: list[RequestHandle]):
    """Lists of (prompt index, Event) from all handles: whatever has arrived, as one batch."""
    if len(handles) == 1:  # the common case: read the handle's own queue, no relay task in between
        q = handles[0]._queue
        while True:
            items = [await q.get()]
            while not q.empty():
                items.append(q.get_nowait())
            events = [(0, e) for e in items if e is not None]
            if events:
                yield events
            if len(events) < len(items):
                return
    q = asyncio.Queue()

    async def pump(i, h):
        async for e in h.events():
            q.put_nowait((i, e))
        q.put_nowait(None)

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(tasks)
        while left:
            items = [await q.get()]
            while not q.empty():
                items.append(q.get_nowait())
            left -= sum(item is None for item in items)
            if any(item is not None for item in items):
                yield [item for item in items if item is not None]
    finally:
        for t in tasks:
            t.cancel()


async def _stream(engine, handles, fmt: Formatter, include_usage: bool):
    try:
        yield b"".join(_sse(chunk) for chunk in fmt.first_chunks())
        async for batch in _merged(handles):
            # one write per batch of events: fewer syscalls and event-loop turns per token
            chunks = [c for c in (fmt.chunk(i, e) for i, e in batch) if c is not None]
            if chunks:
                yield b"".join(_sse(c) for c in chunks)
        if include_usage:
            yield _sse(fmt.usage_chunk())
        yield b"data: [DONE]\n\n"
    finally:  # normal end, or the client went away (the generator is closed/cancelled)
        for h in handles:
            engine.cancel(h)


try:  # orjson (when installed) encodes a chunk several times faster than json: it is paid per token
    import orjson

    def _sse(obj: dict) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
except ImportError:  # pragma: no cover

    def _sse(obj: dict) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
