"""Per-request sampling: penalties, temperature, top-k, top-p, min-p, seeds; stop strings; detokenizing.

Everything here works on ONE sequence's logits row, so a request's tokens never depend on what
else shares its batch: the engine computes the rows batch-invariantly and each row is sampled
with the request's own parameters and its own seeded generator.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SamplingParams:
    """What the caller asked for (OpenAI / vLLM names). `validate()` raises ValueError with the field."""

    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → added to its logit
    n: int = 1
    logprobs: int | None = None  # None: off; k ≥ 0: the chosen token's logprob and the top k

    def validate(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be ≥ 1"),
            ("temperature", 0 <= self.temperature <= 100, "must be in [0, 100]"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= -1, "must be -1, 0 (off) or a positive count"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 100, "must be in (0, 100]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("n", 1 <= self.n <= 16, "must be in [1, 16]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "must be in [0, 20]"),
            ("logit_bias", all(-100 <= b <= 100 for b in self.logit_bias.values()),
             "values must be in [-100, 100]"),
            ("stop", len(self.stop) <= 16 and all(0 < len(s) <= 256 for s in self.stop),
             "at most 16 non-empty strings of ≤ 256 characters"),
        ]  # fmt: skip
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name} {why}")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5  # below this, logits / temperature overflows: same as greedy (vLLM)

    @property
    def plain_greedy(self) -> bool:
        """Greedy without penalties: the engine takes a batched argmax for these rows."""
        return (self.greedy and self.repetition_penalty == 1 and not self.frequency_penalty
                and not self.presence_penalty and not self.logit_bias)  # fmt: skip


class Sampler:
    """Picks the next token of one sequence: penalties → temperature → top-k → top-p → min-p → draw."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int, seed_offset: int = 0):
        self.p = params
        seed = (params.seed + seed_offset) % (1 << 63) if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.counts: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        if params.logit_bias:  # ids were checked against the vocab (requests.check_request)
            self.bias = torch.zeros(vocab_size)
            self.bias[list(params.logit_bias)] = torch.tensor(list(params.logit_bias.values()))
        if params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(vocab_size)
        if params.repetition_penalty != 1:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool)
            ids = torch.tensor([i for i in prompt_ids if 0 <= i < vocab_size], dtype=torch.long)
            self.seen[ids] = True

    def observe(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.seen is not None:  # CTRL / HF: shrink the logits of tokens already present
            rp = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(self.seen, rp, logits)
        if self.counts is not None:  # OpenAI: subtract per occurrence and once for presence
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        if self.bias is not None:  # OpenAI's logit_bias: added to the logits before sampling
            logits = logits + self.bias
        return logits

    def sample(self, logits: torch.Tensor) -> int:
        """The next token id from one row of raw logits (vocab,)."""
        p = self.p
        # On CPU whatever the model's device: the penalty tensors and the seeded generator live there, and
        # one row per token is cheap to move; a seed then draws the same tokens on CPU and GPU.
        logits = self.penalize(logits.float().cpu())
        if p.greedy:
            return int(logits.argmax())
        logits = logits / p.temperature
        if 0 < p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if p.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = sorted_probs.cumsum(-1) - sorted_probs > p.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            return int(logits.argmax())  # extreme penalties/temperature left no distribution: fall back to greedy
        return int(torch.multinomial(probs, 1, generator=self.generator))


def token_logprobs(logits: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and the top-`k` (id, logprob) pairs of one logits row."""
    logp = logits.float().log_softmax(-1)
    top: list[tuple[int, float]] = []
    if k > 0:
        vals, ids = logp.topk(k)
        top = list(zip(ids.tolist(), vals.tolist(), strict=True))
    return float(logp[token]), top


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a multi-byte character.

    Decodes a short window (prefix + new tokens) and emits the difference, as TGI does, so
    tokenizers that drop a leading space when decoding from mid-sequence stay correct.

    A window whose text ends in U+FFFD may be half a character that the next token completes, so
    that last character waits. Everything before it is final (UTF-8 resynchronises: only the last,
    possibly incomplete, byte sequence can still change) and goes out at once. Holding the whole
    window back instead (vLLM's and TGI's rule) stalls a stream until its end when a model keeps
    emitting bytes that are not valid UTF-8 — as a random-weight model in a benchmark does.
    """

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        # A fast tokenizer's Rust decoder directly: transformers' `decode` wrapper costs ~4x the decode
        # itself, twice per token per sequence (the same text: no clean-up, special tokens skipped).
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.sent = 0  # characters of the window's new text already emitted (while its end was held)

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        start = len(prefix) + self.sent
        if text.endswith("\ufffd"):  # maybe half a character: all but it is final
            delta = text[start:-1]
            self.sent += len(delta)
            return delta
        if len(text) > len(prefix):
            self.prefix_offset, self.read_offset, self.sent = self.read_offset, len(self.ids), 0
            return text[start:]
        return ""  # nothing visible yet (e.g. a special token): wait for the next token

    def flush(self) -> str:
        """Whatever is still held back (at the end of the sequence)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        start = len(prefix) + self.sent
        self.prefix_offset = self.read_offset = len(self.ids)
        self.sent = 0
        return text[start:]


class StopStringFilter:
    """Holds back text that might be the start of a stop string; finds stops across token boundaries.

    `push(delta)` returns (text safe to emit, stopped). The stop string itself is never emitted.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0

    def push(self, delta: str) -> tuple[str, bool]:
        self.text += delta
        if not self.stops:
            out, self.sent = self.text[self.sent :], len(self.text)
            return out, False
        # A stop can only begin at or after `sent`: anything earlier that could start one was held back.
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out, self.sent = self.text[self.sent : end], end
            self.text = self.text[:end]
            return out, True
        hold = 0
        for s in self.stops:  # the longest suffix of the text that is a proper prefix of a stop string
            for n in range(min(len(s) - 1, len(self.text) - self.sent), hold, -1):
                if self.text.endswith(s[:n]):
                    hold = n
                    break
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent : end], end
        return out, False

    def flush(self) -> str:
        """The held-back text, once no stop string can complete any more."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
