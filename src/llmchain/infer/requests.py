"""A request as its caller sees it: the handle to iterate its events or cancel it, its stats, its checks.

Shared by the engine (infer/engine.py), which fills the handles, and the server's side of an engine
process (serve/worker.py), which relays them.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from llmchain.infer.sampling import SamplingParams


class EngineOverloaded(Exception):
    """The waiting queue is full: answer 503 with Retry-After."""


class PromptTooLong(ValueError):
    """The prompt does not fit the context (max_model_len)."""


@dataclass
class Event:
    """One step of one choice: a text delta (maybe empty), its token ids, logprobs, and the finish reason."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None = None  # per token: {"id", "logprob", "top": [(id, logprob)]}
    finish_reason: str | None = None


@dataclass
class RequestStats:
    arrival: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def timings(self) -> dict[str, float]:
        """llama.cpp-style timings: prompt (prefill) and generation speeds."""
        t0, t1 = self.admitted or self.arrival, self.first_token or self.arrival
        t2 = self.finished or time.perf_counter()
        prompt_ms, gen_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        gen_n = max(self.completion_tokens - 1, 0)  # the first token came out of the prefill
        return {
            "prompt_n": self.prompt_tokens,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_second": round(self.prompt_tokens / prompt_ms * 1e3, 2) if prompt_ms > 0 else 0.0,
            "predicted_n": self.completion_tokens,
            "predicted_ms": round(gen_ms, 3),
            "predicted_per_second": round(gen_n / gen_ms * 1e3, 2) if gen_ms > 0 else 0.0,
        }


def deliver_all(items: list[tuple[RequestHandle, Event | None]]) -> None:
    """Hand events to their callers: sync queues directly, each event loop in ONE thread-safe call
    per step (waking a loop once per token per request would cost more than the token)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for h, item in items:
        if h._loop is None:
            h._queue.put(item)
        else:
            by_loop.setdefault(h._loop, []).append((h, item))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the event loop is gone (server shutting down)
            for h, _ in batch:
                h.cancelled = True


def _put_all(batch) -> None:
    for h, item in batch:
        h._queue.put_nowait(item)


def check_request(prompt_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int,
                  max_batch_size: int) -> None:  # fmt: skip
    """Raise PromptTooLong / ValueError for a request no engine of these limits can run."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) >= max_model_len:
        raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens but the context is {max_model_len} "
                            f"(max_model_len); shorten the prompt")  # fmt: skip
    if max(prompt_ids) >= vocab_size or min(prompt_ids) < 0:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    if any(not 0 <= t < vocab_size for t in params.logit_bias):
        raise ValueError(f"logit_bias keys must be token ids in [0, {vocab_size})")
    if params.n > max_batch_size:
        raise ValueError(f"n={params.n} exceeds the server's max batch size ({max_batch_size})")


class RequestHandle:
    """The caller's side of a request: iterate its events (async or sync), or cancel it."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop | None):
        self.id = next(self._ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.stats = RequestStats(prompt_tokens=len(prompt_ids))
        self.cancelled = False
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop else queue.Queue()
        self._open = params.n  # choices not finished yet

    def _emit(self, item: Event | None) -> None:
        deliver_all([(self, item)])

    async def events(self):
        """Async iterator of Events until every choice has finished."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def iter_events(self, timeout: float | None = None):
        """Blocking iterator of Events (for callers without an event loop, e.g. `llmchain chat`)."""
        while True:
            item = self._queue.get(timeout=timeout)
            if item is None:
                return
            yield item

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step. Safe to call any time, from any thread."""
        self.cancelled = True
