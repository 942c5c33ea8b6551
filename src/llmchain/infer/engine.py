"""The inference engine — the one way llmchain generates text: a request queue, KV-cache slots and a
scheduler doing continuous batching.

Two ways to drive it: `start()` runs the scheduler on a background thread and `submit()` returns a
handle to stream from (the server, `llmchain chat`); `generate()` runs the steps on the calling
thread until a list of prompts is done (`llmchain generate`, eval, reports, recipes). Both take the
same `SamplingParams` and stop at the same tokens (`stop_token_ids`).

Every step the scheduler (1) drops cancelled sequences, (2) admits waiting requests into free
slots, and (3) runs ONE forward that prefills the admitted prompts and decodes one token for every
running sequence. A finished or cancelled sequence frees its slot at once.

Batch invariance (a request's tokens never depend on its neighbours) comes from how infer/forward.py
computes a step: row-invariant matmul calls, each decoding row's attention over its own positions only
(the C kernels) or over keys padded so masked ones add exact zeros (PyTorch), each prompt in calls of
its own (tests/test_serve_engine.py checks it bit for bit). `llmchain serve` runs the engine in a child
process (serve/worker.py); requests and their events are in infer/requests.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmchain.infer.decoder import WEIGHTS, load_decoder
from llmchain.infer.forward import KEY_PAD, KVCache, copy_prefix, prepare_decode, step_logits, use_bf16
from llmchain.infer.kernels import BlockedKV
from llmchain.infer.kernels import load as load_kernel
from llmchain.infer.requests import (  # noqa: F401 — EngineOverloaded, PromptTooLong, Event: the engine's API too
    EngineOverloaded,
    Event,
    PromptTooLong,
    RequestHandle,
    check_request,
    deliver_all,
)
from llmchain.infer.sampling import (
    IncrementalDetokenizer,
    Sampler,
    SamplingParams,
    StopStringFilter,
    token_logprobs,
)

log = logging.getLogger("llmchain.infer")
# End-of-turn tokens of the chat templates we know (ours is ChatML): a reply ends at any of them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def stop_token_ids(tokenizer, model_config=None, model_dir: str | Path | None = None) -> list[int]:
    """The ids that end a generation: the tokenizer's and the model config's EOS, generation_config.json's
    `eos_token_id` (an id or a list), and the chat templates' end-of-turn tokens present in the vocab.
    Every caller (serve, chat, generate, eval) uses this one list, so they all stop alike."""
    eos = {tokenizer.eos_token_id, getattr(model_config, "eos_token_id", None)}
    gen = Path(model_dir) / "generation_config.json" if model_dir is not None else None
    if gen is not None and gen.is_file():
        try:
            g = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            log.warning("%s: unreadable; its eos_token_id is ignored", gen)
            g = None
        eos.update(g if isinstance(g, list) else [g])
    vocab = tokenizer.get_vocab()
    eos.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(e for e in eos if isinstance(e, int))


@dataclass
class Completion:
    """What `Engine.generate` returns per prompt and choice: the text, its token ids, why it stopped."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS / end of turn / stop string) or "length"


@dataclass
class _Seq:
    handle: RequestHandle
    index: int
    slot: int
    sampler: Sampler
    detok: IncrementalDetokenizer
    stopper: StopStringFilter
    max_new: int
    pos: int = 0  # where the next fed token goes in the cache
    last_token: int = 0
    generated: int = 0
    last_time: float = 0.0
    stop_ids: set[int] = field(default_factory=set)


class Engine:
    """Continuous-batching generation over one `Llama` and its tokenizer.

    The engine takes a snapshot of the model's weights (infer/forward.py `prepare_decode`): the
    caller's model is not changed, and later changes to it are not seen.

    `threads` sets PyTorch's CPU threads (process-wide). The default, 1, keeps decoding
    batch-invariant for any batch size: with several threads MKL splits large matmuls' inner sums
    across threads differently for different row counts (seen from 64 rows up). None keeps torch's.
    `decode_threads` (default: `threads`, else 1) runs the fused C decode step, whose rows' results do
    not depend on its thread count (more than 1 pays only on idle cores: OpenMP's barriers stall when
    another process holds one of them). `weights` (auto | float32 | bfloat16 | int8) picks the fused step's
    weight format; int8 is opt-in (its perplexity cost: docs/decode.md).

    `submit()` is thread-safe and returns at once; it raises EngineOverloaded when `max_queue`
    requests are already waiting and PromptTooLong when the prompt leaves no room to generate.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int | None = None,
        max_queue: int | None = None,
        max_model_len: int | None = None,
        max_prefill_tokens: int = 2048,
        eos_token_ids: list[int] | None = None,
        metrics=None,
        threads: int | None = 1,
        dtype: str = "auto",
        weights: str = "auto",
        decode_threads: int | None = None,
    ):
        from llmchain.config import ServeConfig

        defaults = ServeConfig()  # the one definition of the serving defaults (None: take it)
        max_batch_size = max_batch_size or defaults.max_batch_size
        max_queue = defaults.max_queue if max_queue is None else max_queue
        self.tokenizer, self.metrics = tokenizer, metrics
        self.config = model.config
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_model_len = min(max_model_len or self.config.max_position_embeddings,
                                 self.config.max_position_embeddings)  # fmt: skip
        self.max_prefill_tokens = max_prefill_tokens
        self.eos_ids = set(eos_token_ids or [])
        weight_dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        cache_len = -(-self.max_model_len // KEY_PAD) * KEY_PAD
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
        if weights != "auto" and dtype == "bfloat16":
            raise ValueError(f"weights {weights} runs on the fused decode step, which dtype bfloat16 (AMX) excludes")
        # bf16 linears on AMX CPUs (infer/forward.py) — unless weights are asked for: the fused C step's then
        self.bf16 = use_bf16(dtype, device, weight_dtype) if weights == "auto" else False
        # bf16 linears: keys/values in bf16 too (as vLLM's default cache dtype), read by the C kernel
        cfg = self.config
        kernel = load_kernel(cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads) if self.bf16 else None
        if kernel is not None:
            self.cache = BlockedKV(cfg, max_batch_size, cache_len, device)
        else:
            self.cache = KVCache(cfg, max_batch_size, cache_len, device, weight_dtype)
        prev = torch.get_num_threads()
        torch.set_num_threads(threads or prev)  # prepare_decode probes kernels: under the threads they will run on
        try:
            self.decode_weights = prepare_decode(model, cache_len, bf16=self.bf16)
            self.decode_weights.kernels = kernel
        finally:
            torch.set_num_threads(prev)
        # Without the oneDNN bf16 path, decoding rows go through the fused C step (infer/decoder.py) over
        # the same fp32 cache; prompts are still prefilled by step_logits. auto: bf16 weights (half the
        # bytes each step reads), float32 dtype: fp32 weights (the reference's numbers).
        self.decoder = None
        if kernel is None and weight_dtype == torch.float32 and device.type == "cpu":
            kind = weights if weights != "auto" else ("float32" if dtype == "float32" else "bfloat16")
            self.decoder = load_decoder(self.decode_weights, self.cache, kind, decode_threads or threads or 1)
        if weights != "auto" and self.decoder is None:
            raise ValueError(f"weights {weights} needs the fused decode step, which cannot run here (an fp32 "
                             "model on a CPU and a C compiler; see the log)")
        self.device = device
        self.free_slots: list[int] = list(range(max_batch_size))[::-1]
        self.waiting: deque[RequestHandle] = deque()
        self.running: list[_Seq] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.threads, self._prev_threads = threads, None
        self._outbox: list[tuple[RequestHandle, Event | None]] = []  # delivered at the end of each step
        self.deliver = deliver_all  # how a step's events reach their callers (serve/worker.py: a pipe)

    # ---- public -------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self.threads:  # process-wide in PyTorch; restored by stop()
            self._prev_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._thread = threading.Thread(target=self._loop, name="llmchain-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._prev_threads:
            torch.set_num_threads(self._prev_threads)

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        check_request(prompt_ids, params, self.max_model_len, self.config.vocab_size, self.max_batch_size)
        handle = RequestHandle(list(prompt_ids), params, loop)
        with self._cv:
            if self.error is not None:
                raise RuntimeError(f"the engine has failed: {self.error}")
            if len(self.waiting) >= self.max_queue:
                raise EngineOverloaded(f"{len(self.waiting)} requests are waiting (max_queue); retry later")
            self.waiting.append(handle)
            self._cv.notify_all()
        return handle

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[Completion]]:
        """Run `prompts` (token ids) to completion on the calling thread, batched as the server batches
        them; returns, per prompt, its `params.n` choices. Raises PromptTooLong / ValueError for a
        prompt no request could run (before any work starts). With the background thread running, the
        requests join its batch instead."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        for ids, p in zip(prompts, plist, strict=True):
            p.validate()
            check_request(ids, p, self.max_model_len, self.config.vocab_size, self.max_batch_size)
        handles = []
        if self._thread is not None and self._thread.is_alive():
            handles = [self.submit(ids, p) for ids, p in zip(prompts, plist, strict=True)]
        else:
            prev = torch.get_num_threads()
            torch.set_num_threads(self.threads or prev)
            try:
                with torch.inference_mode():
                    for ids, p in zip(prompts, plist, strict=True):  # no queue bound for our own caller
                        h = RequestHandle(list(ids), p, None)
                        with self._cv:
                            self.waiting.append(h)
                        handles.append(h)
                        while len(self.waiting) > self.max_batch_size:  # keep the queue short: steps as we go
                            self.step()
                    while self.waiting or self.running:
                        self.step()
            finally:
                torch.set_num_threads(prev)
        out = []
        for h in handles:
            choices = [Completion("", [], "length") for _ in range(h.params.n)]
            for ev in h.iter_events():
                c = choices[ev.index]
                c.text += ev.text
                c.token_ids += ev.token_ids
                if ev.finish_reason:
                    c.finish_reason = ev.finish_reason
            out.append(choices)
        return out

    def cancel(self, handle: RequestHandle) -> None:
        handle.cancel()
        with self._cv:
            self._cv.notify_all()

    @property
    def num_running(self) -> int:
        return len({s.handle.id for s in self.running})

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def slots_used(self) -> int:
        return self.max_batch_size - len(self.free_slots)

    # ---- the scheduler loop -------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not (self._stop or self.waiting or self.running):
                            self._cv.wait()
                        if self._stop:
                            break
                    self.step()
        except BaseException as e:  # keep the server answering (503s), and say why
            log.exception("engine failed")
            self.error = e
            self.deliver([(s.handle, None) for s in self.running] + [(h, None) for h in self.waiting])

    def step(self) -> None:
        """One scheduler iteration: reap cancelled, admit, then ONE forward that prefills the admitted
        prompts and decodes one token for every running sequence."""
        try:
            self._reap_cancelled()
            self._compact()
            admitted = self._admit()
            if self.running or admitted:
                self._forward(admitted)
        finally:
            outbox, self._outbox = self._outbox, []
            self.deliver(outbox)

    def _reap_cancelled(self) -> None:
        with self._cv:
            for h in [h for h in self.waiting if h.cancelled]:
                self.waiting.remove(h)
                self._finish_request(h, "abort")
        for s in [s for s in self.running if s.handle.cancelled]:
            self._finish_seq(s, "abort", emit=False)

    def _compact(self) -> None:
        """Move running sequences into the lowest slots, so the B decoding rows hold slots 0..B-1 and
        attention reads a view of the cache rather than a gathered copy (a move copies one slot's
        prefix, once, when a sequence below it finishes). Admission then takes the lowest free slots."""
        B = len(self.running)
        with self._cv:
            high = sorted((s for s in self.running if s.slot >= B), key=lambda s: s.slot)
            if high:  # here every used slot is a running sequence's, so there are as many holes below B
                holes = sorted(x for x in self.free_slots if x < B)
                for s, hole in zip(high, holes, strict=True):
                    copy_prefix(self.cache, hole, s.slot, s.pos)
                    self.free_slots.remove(hole)
                    self.free_slots.append(s.slot)
                    s.slot = hole
            self.free_slots.sort(reverse=True)  # pop() gives the lowest

    def _admit(self) -> list[tuple[RequestHandle, list[int]]]:
        """Waiting requests that fit the free slots and this step's prefill budget (FIFO)."""
        budget, out = self.max_prefill_tokens, []
        with self._cv:
            while self.waiting and len(self.free_slots) >= self.waiting[0].params.n:
                h = self.waiting[0]
                if budget < len(h.prompt_ids) and out:
                    break  # this step's prefill budget is spent (one prompt always goes through)
                self.waiting.popleft()
                out.append((h, [self.free_slots.pop() for _ in range(h.params.n)]))
                budget -= len(h.prompt_ids)
        now = time.perf_counter()
        for h, _ in out:
            h.stats.admitted = now
            if self.metrics:
                self.metrics.on_admitted(now - h.stats.arrival, len(h.prompt_ids))
        return out

    def _forward(self, admitted: list[tuple[RequestHandle, list[int]]]) -> None:
        seqs = sorted(self.running, key=lambda s: s.slot)
        dev = self.device
        # one tensor for the three rows (a step of a small model is ~0.5 ms: each torch call counts)
        tokens, positions, slots = torch.tensor([[s.last_token for s in seqs], [s.pos for s in seqs],
                                                 [s.slot for s in seqs]], dtype=torch.long, device=dev).view(3, -1)  # fmt: skip
        prompts = [(h.prompt_ids, sl[0]) for h, sl in admitted]
        contiguous = all(s.slot == i for i, s in enumerate(seqs))
        if self.decoder is None:
            logits = step_logits(self.cache, self.decode_weights, tokens, positions, slots, prompts,
                                 pad=self.max_batch_size > 1, contiguous=contiguous)  # fmt: skip
        else:  # decoding rows in one C call; prompts prefilled apart (no row's numbers depend on the other)
            parts = [self.decoder.step(tokens, positions, slots)] if seqs else []
            if prompts:
                none = tokens[:0]
                parts.append(step_logits(self.cache, self.decode_weights, none, none, none, prompts,
                                         pad=self.max_batch_size > 1))  # fmt: skip
            logits = torch.cat(parts) if len(parts) > 1 else parts[0]
        B = len(seqs)
        greedy = [i for i, s in enumerate(seqs) if s.handle.params.plain_greedy]
        picks: dict[int, int] = {}
        if greedy:  # all greedy (the usual case): the decoding rows as they are, no gathered copy
            rows = logits[:B] if len(greedy) == B else logits[greedy]
            kernels = self.decode_weights.kernels
            if kernels:
                best = kernels.argmax(rows)
            elif rows.device.type == "cpu":  # numpy's argmax: the first maximum, as torch's, at a third of its cost
                best = rows.numpy().argmax(-1).tolist()
            else:
                best = rows.max(-1).indices.tolist()
            picks = dict(zip(greedy, best, strict=True))
        for i, s in enumerate(seqs):
            s.pos += 1
            self._safely(s, lambda s=s, i=i: self._accept(s, picks[i] if i in picks else s.sampler.sample(logits[i]),
                                                         logits[i]))  # fmt: skip
        for j, (h, sl) in enumerate(admitted):
            self._start(h, sl, logits[B + j])

    def _start(self, h: RequestHandle, slots: list[int], row: torch.Tensor) -> None:
        """The prompt is in the cache of slots[0] and `row` holds its next-token logits: start its choices."""
        T = len(h.prompt_ids)
        for s in slots[1:]:  # n > 1: every choice starts from the same prompt cache
            copy_prefix(self.cache, s, slots[0], T)
        max_new = self.max_model_len - T
        if h.params.max_tokens is not None:
            max_new = min(max_new, h.params.max_tokens)
        stop_ids = set() if h.params.ignore_eos else set(self.eos_ids)
        stop_ids.update(h.params.stop_token_ids)
        for i, slot in enumerate(slots):
            seq = _Seq(h, i, slot, Sampler(h.params, h.prompt_ids, self.config.vocab_size, seed_offset=i),
                       IncrementalDetokenizer(self.tokenizer), StopStringFilter(h.params.stop), max_new, pos=T,
                       stop_ids=stop_ids)  # fmt: skip
            self.running.append(seq)
            self._safely(seq, lambda seq=seq: self._accept(seq, seq.sampler.sample(row), row))

    def _safely(self, s: _Seq, fn) -> None:
        # One request's bad luck (a sampling error) must not take the engine — and everyone else — down.
        try:
            fn()
        except Exception:
            log.exception("request %d failed; aborting it", s.handle.id)
            if s in self.running:
                self._finish_seq(s, "abort", emit=False)

    # ---- per-token bookkeeping ----------------------------------------------------------------
    def _accept(self, s: _Seq, tok: int, row: torch.Tensor) -> None:
        h, now = s.handle, time.perf_counter()
        s.generated += 1
        s.last_token = tok
        h.stats.completion_tokens += 1
        s.sampler.observe(tok)
        if self.metrics:
            if h.stats.first_token is None:
                self.metrics.on_first_token(now - h.stats.arrival)
            else:
                self.metrics.on_token(now - s.last_time if s.generated > 1 else None)
        if h.stats.first_token is None:
            h.stats.first_token = now
        s.last_time = now
        lp = None
        if h.params.logprobs is not None:
            lp_tok, top = token_logprobs(row, tok, h.params.logprobs)
            lp = [{"id": tok, "logprob": lp_tok, "top": top}]
        reason = None
        if tok in s.stop_ids:  # end of sequence: its own text is not part of the output
            text, stopped = s.stopper.push(s.detok.flush())
            text += "" if stopped else s.stopper.flush()
            reason = "stop"
        else:
            text, stopped = s.stopper.push(s.detok.push(tok))
            if stopped:
                reason = "stop"
            elif s.generated >= s.max_new:  # out of budget: release what was held back
                more, stopped = s.stopper.push(s.detok.flush())
                text += more + ("" if stopped else s.stopper.flush())
                reason = "stop" if stopped else "length"
        self._outbox.append((h, Event(s.index, text, [tok], lp, reason)))
        if reason:
            self._finish_seq(s, reason)

    def _finish_seq(self, s: _Seq, reason: str, emit: bool = True) -> None:
        self.running.remove(s)
        with self._cv:
            self.free_slots.append(s.slot)
        if not emit:
            self._outbox.append((s.handle, Event(s.index, "", [], None, reason)))
        if self.metrics:
            self.metrics.on_seq_finished(reason)
        s.handle._open -= 1
        if s.handle._open == 0:
            self._finish_request(s.handle, None)

    def _finish_request(self, h: RequestHandle, reason: str | None) -> None:
        h.stats.finished = time.perf_counter()
        if reason is not None and self.metrics:  # never admitted: count it here
            self.metrics.on_seq_finished(reason)
        if self.metrics:
            self.metrics.on_request_finished(h.stats.finished - h.stats.arrival)
        self._outbox.append((h, None))


def load_engine(model_dir: str | Path, *, device: str = "cpu", max_batch_size: int | None = None, dtype: str = "auto",
                threads: int | None = None, chat_template: str | None = None, weights: str = "auto") -> Engine:
    """An in-process engine over the model dir's weights and tokenizer (`engine.tokenizer`), stopping at
    `stop_token_ids`. What `llmchain generate`, `chat`, eval, reports and recipe stages generate with.

    `threads` None keeps PyTorch's thread count (the server uses 1; see `Engine`). UserError for a dir
    without tokenizer files or whose tokenizer does not fit the model."""
    from llmchain.errors import UserError
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)  # first: a dir without tokenizer files fails before loading weights
    if chat_template is not None:
        tok.chat_template = chat_template
    model = load_model(model_dir, device=device)
    if len(tok) > model.config.vocab_size:
        raise UserError(f"{model_dir}: the tokenizer has {len(tok)} tokens but the model only "
                        f"{model.config.vocab_size}; tokenizer and model do not belong together")
    return Engine(model, tok, max_batch_size=max_batch_size, dtype=dtype, threads=threads, weights=weights,
                  eos_token_ids=stop_token_ids(tok, model.config, model_dir))
