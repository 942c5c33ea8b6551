"""The engine in a process of its own, so the HTTP event loop and the engine never wait on one GIL.

In one process, every torch op the engine thread finishes must win the GIL back from the event loop,
which is busy formatting and sending an SSE chunk per stream per token: at 16 streams that measured
~1 ms on a ~9 ms decode step. vLLM splits its API server and engine core the same way.

`EngineProcess` is the server's side and offers what the API uses of an `Engine` (submit, cancel,
counts, error, stop). The child (`_child_main`) loads the model, runs a real `Engine`, and sends one
message per step: every request's events (with its stats when it finishes), the metric calls the
step made, and the counts behind /metrics. Requests are validated and the queue bound is enforced
here, before the request is accepted, exactly as `Engine.submit` would.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import signal
import threading
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace

from llmchain.config import ServeConfig
from llmchain.infer.requests import (
    EngineOverloaded,
    Event,
    RequestHandle,
    RequestStats,
    check_request,
    deliver_all,
)
from llmchain.infer.sampling import SamplingParams

log = logging.getLogger("llmchain.serve")


_DEFAULT = ServeConfig()  # every option's default is defined once, in config.py


@dataclass
class EngineSpec:
    """What builds an engine: the model dir and the engine's options (picklable, for the child)."""

    model_dir: str
    chat_template: str | None = _DEFAULT.chat_template
    device: str = _DEFAULT.device
    max_batch_size: int = _DEFAULT.max_batch_size
    max_queue: int = _DEFAULT.max_queue
    max_model_len: int | None = _DEFAULT.max_model_len
    threads: int | None = _DEFAULT.threads  # None: leave torch's thread count alone
    dtype: str = _DEFAULT.dtype
    weights: str = _DEFAULT.weights

    @classmethod
    def from_options(cls, opts) -> EngineSpec:
        """The engine's part of the server's options (a ServeConfig or anything with the same fields)."""
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls)})


def load_tokenizer(spec: EngineSpec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model_dir)
    if spec.chat_template:
        tok.chat_template = Path(spec.chat_template).read_text(encoding="utf-8")
    return tok


def build_engine(spec: EngineSpec, metrics=None, max_queue: int | None = None):
    """(tokenizer, Engine) for `spec`: the model, its end-of-sequence ids, the engine's options."""
    from llmchain.infer.engine import Engine, stop_token_ids
    from llmchain.model.io import load_model

    tok = load_tokenizer(spec)
    model = load_model(spec.model_dir, device=spec.device)
    engine = Engine(model, tok, max_batch_size=spec.max_batch_size, max_queue=max_queue or spec.max_queue,
                    max_model_len=spec.max_model_len, eos_token_ids=stop_token_ids(tok, model.config, spec.model_dir),
                    metrics=metrics, threads=spec.threads, dtype=spec.dtype,
                    weights=spec.weights)  # fmt: skip
    return tok, engine  # the engine holds its own copy of the weights: the model is freed here


# a flat dataclass's field values, in order (not `astuple`, which deep-copies)
_event_fields = attrgetter(*(f.name for f in fields(Event)))
_stats_fields = attrgetter(*(f.name for f in fields(RequestStats)))


class _Recorder:
    """Stands in for ServeMetrics in the child: records each call, replayed by the parent."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


def _child_main(conn, spec: EngineSpec) -> None:
    """The engine process: build the engine, then serve commands from `conn` until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us (or its pipe closes)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        metrics = _Recorder()
        _, engine = build_engine(spec, metrics, max_queue=1 << 30)  # the parent bounds the queue
    except BaseException as e:  # noqa: BLE001 — reported to the parent, which answers 503 with it
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    lock = threading.Lock()  # one snapshot of (submits seen, queue) per step message
    send_lock = threading.Lock()
    rid_of: dict[int, int] = {}  # child handle id → the parent's request id
    handles: dict[int, RequestHandle] = {}  # parent's request id → child handle
    seen = 0

    def send(events: list, calls: list) -> None:
        """One message: events [(request id, Event | None, stats)], metric calls, counts, error."""
        counts = (seen, engine.num_running, engine.num_waiting, engine.slots_used)
        error = None if engine.error is None else f"{type(engine.error).__name__}: {engine.error}"
        with send_lock:
            conn.send(("step", events, calls, counts, error))

    def deliver(items) -> None:  # the engine's hook, called at the end of every step
        out = []
        with lock:
            calls, metrics.calls = metrics.calls, []
            for h, event in items:
                rid = rid_of.get(h.id)
                if rid is None:
                    continue
                # plain tuples (a tenth of a dataclass's pickling); the stats only where the caller reads
                # them (usage and timings come with a finish reason or the end)
                last = event is None or event.finish_reason is not None
                stats = _stats_fields(h.stats) if last else None
                out.append((rid, None if event is None else _event_fields(event), stats))
                if event is None:
                    del rid_of[h.id]
                    handles.pop(rid, None)
            send(out, calls)

    engine.deliver = deliver
    # Everything loaded so far (torch, transformers, the model) lives as long as the process: keep the
    # collector from walking it again and again — a full collection during the first burst of requests
    # measured 100+ ms. (vLLM freezes after start-up for the same reason.)
    gc.collect()
    gc.freeze()
    engine.start()
    conn.send(("ready", {"vocab_size": engine.config.vocab_size, "max_model_len": engine.max_model_len}))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "submit":
                _, rid, prompt_ids, params = msg
                with lock:
                    seen += 1
                    try:
                        h = engine.submit(prompt_ids, params)
                        rid_of[h.id], handles[rid] = rid, h
                    except Exception:  # the parent checked it already: end just this request
                        log.exception("request %d refused by the engine", rid)
                        send([(rid, None, None)], [])
            elif msg[0] == "cancel":
                h = handles.get(msg[1])
                if h is not None:
                    engine.cancel(h)
            elif msg[0] == "stop":
                break
    except (EOFError, OSError):  # the server went away
        pass
    finally:
        engine.stop()


class EngineProcess:
    """The server's handle on an engine running in a child process (see the module docstring)."""

    def __init__(self, spec: EngineSpec, metrics=None):
        self.spec, self.metrics = spec, metrics
        self.max_batch_size, self.max_queue = spec.max_batch_size, spec.max_queue
        self.error: BaseException | None = None
        self.config = SimpleNamespace(vocab_size=0)
        self.max_model_len = 0
        self._handles: dict[int, RequestHandle] = {}
        self._lock = threading.RLock()  # _send may _fail while submit holds it
        self._sent = 0
        self._counts = (0, 0, 0, 0)  # the child's (submits seen, running, waiting, slots used)
        self._conn = self._proc = self._reader = None
        self._stopping = False

    def start(self) -> EngineProcess:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, self.spec), name="llmchain-engine", daemon=True)
        self._proc.start()
        child.close()
        try:
            kind, info = self._conn.recv()
        except EOFError:  # it died before saying anything: an import error, or a script without a main guard
            self._proc.join(timeout=10)
            kind, info = "failed", (f"it exited with code {self._proc.exitcode} before it was ready (see its "
                                    "error above; a script that starts the server needs `if __name__ == "
                                    "'__main__':`, as multiprocessing's spawn requires)")  # fmt: skip
        if kind != "ready":
            self._proc.join(timeout=10)
            raise RuntimeError(f"the engine process failed to start: {info}")
        self.config.vocab_size, self.max_model_len = info["vocab_size"], info["max_model_len"]
        self._reader = threading.Thread(target=self._read, name="llmchain-engine-reader", daemon=True)
        self._reader.start()
        return self

    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except (OSError, ValueError) as e:  # the child is gone: say so once
            self._fail(RuntimeError(f"the engine process is gone ({e})"))

    def _read(self) -> None:
        try:
            while True:
                _, events, calls, counts, error = self._conn.recv()
                for name, args in calls:
                    if self.metrics is not None:
                        getattr(self.metrics, name)(*args)
                items = []
                with self._lock:
                    self._counts = counts
                    for rid, event, stats in events:
                        h = self._handles.get(rid) if event is not None else self._handles.pop(rid, None)
                        if h is not None:
                            if stats is not None:
                                h.stats = RequestStats(*stats)
                            items.append((h, None if event is None else Event(*event)))
                deliver_all(items)
                if error is not None:
                    raise RuntimeError(error)
        except (EOFError, OSError, RuntimeError) as e:
            if self._stopping:  # stop() asked the child to exit: its pipe closing is expected
                return
            self._fail(e if isinstance(e, RuntimeError) else RuntimeError(f"the engine process exited ({e!r})"))

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            log.error("engine failed: %s", e)
            self.error = e
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        deliver_all([(h, None) for h in handles])

    def submit(self, prompt_ids: list[int], params: SamplingParams, loop=None) -> RequestHandle:
        check_request(prompt_ids, params, self.max_model_len, self.config.vocab_size, self.max_batch_size)
        handle = RequestHandle(list(prompt_ids), params, loop)
        with self._lock:
            if self.error is not None:
                raise RuntimeError(f"the engine has failed: {self.error}")
            waiting = self._counts[2] + self._sent - self._counts[0]
            if waiting >= self.max_queue:
                raise EngineOverloaded(f"{waiting} requests are waiting (max_queue); retry later")
            self._handles[handle.id] = handle
            self._sent += 1
            self._send(("submit", handle.id, handle.prompt_ids, params))
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        handle.cancel()
        with self._lock:
            if handle.id in self._handles:
                self._send(("cancel", handle.id))

    @property
    def num_running(self) -> int:
        return self._counts[1]

    @property
    def num_waiting(self) -> int:
        return self._counts[2] + self._sent - self._counts[0]

    @property
    def slots_used(self) -> int:
        return self._counts[3]

    def stop(self) -> None:
        if self._proc is None:
            return
        self._stopping = True
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
