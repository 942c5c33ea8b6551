"""OpenAI-compatible request bodies (pydantic), the error shape, and the response / stream-chunk builder.

Unknown fields are ignored, as vLLM does, so clients that send newer OpenAI fields keep working.
Fields beyond OpenAI's (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos) are vLLM's.
Every number must be finite and every string valid Unicode (no lone UTF-16 surrogate, which JSON's
"\\ud800" escape can carry and no tokenizer accepts): a body that breaks either is a 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmchain.infer.requests import Event
from llmchain.infer.sampling import SamplingParams


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {401: "authentication_error", 429: "rate_limit_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": printable(self.message), "type": kind,
                          "param": None if self.param is None else printable(self.param, 64),
                          "code": self.code}}  # fmt: skip


def printable(text: str, limit: int = 500) -> str:
    """`text` safe to put in an error body: lone surrogates (which no UTF-8 encoder takes) as \\uXXXX
    escapes, and cut to `limit` characters (a message may quote the client's input)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_lone_surrogate(data: Any) -> str | None:
    """The path (e.g. "messages.0.content") of a string or key in parsed JSON that is not valid Unicode,
    or None if all are. A loop, not recursion: the body may nest as deep as the JSON parser allowed."""
    stack: list[tuple[tuple | None, Any]] = [(None, data)]  # (path as nested (parent, key) pairs, value)
    while stack:
        path, x = stack.pop()
        if isinstance(x, str):
            if not x.isascii() and not _is_unicode(x):
                parts = []
                while path is not None:
                    path, key = path
                    parts.append(str(key))
                return ".".join(reversed(parts)) or "body"
        elif isinstance(x, dict):
            for k, v in x.items():
                stack += [((path, k), k), ((path, k), v)]
        elif isinstance(x, list):  # numbers (most of a token-id prompt) cannot be invalid: skip them
            stack.extend(((path, i), v) for i, v in enumerate(x) if isinstance(v, (str, list, dict)))
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Body(BaseModel):
    # NaN and ±Infinity are JSON extensions Python's parser accepts: no sampling parameter means them
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class _Request(_Body):
    """A request body: every string in it (fields, list items, dict keys, ignored fields) must be valid
    Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        path = _first_lone_surrogate(data)
        if path is not None:  # an APIError, not a ValueError: pydantic lets it through to the handler
            raise APIError(400, f"{path}: not valid Unicode text (a lone UTF-16 surrogate)",
                           path.split(".")[0])  # fmt: skip
        return data


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Request):
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    # token id (JSON keys are strings: "50256") → a bias added to its logit, as OpenAI's [-100, 100]
    logit_bias: dict[int, float] | None = None

    def sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams for this body; ValueError names a bad field."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        p = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logit_bias=dict(self.logit_bias or {}),
            n=self.n,
            logprobs=logprobs,
        )
        p.validate()
        return p


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(..., description="Text, texts, or token ids.")
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for p in self.content:
            if p.type != "text" or p.text is None:
                raise APIError(400, f"content part of type {p.type!r} is not supported (text only)", "messages")
            parts.append(p.text)
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # ours: on a server started with --index, false sends the messages as they are (no passages, no
    # citations); ignored by a server without an index
    retrieval: bool = True


class ClassifyRequest(_Request):
    model: str | None = None
    input: str | list[str] = Field(..., description="One text or a list of texts.")


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(..., description="A text or a list of texts.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class Grounding:
    """The passages a chat request's prompt holds (`serve --index`), whether each quotes its source
    exactly, and the hook that counts citations sent and dropped."""

    def __init__(self, hits: list, verified: list[bool], on_citations):
        self.hits, self.verified, self.on_citations = hits, verified, on_citations

    def context(self) -> list[dict[str, Any]]:
        from llmchain.rag.answer import passage_entry

        return [dict(passage_entry(n, h), score=h.score) for n, h in enumerate(self.hits, 1)]

    def citations(self, answer: str) -> list[dict[str, Any]]:
        from llmchain.rag.answer import citations

        kept, dropped = citations(answer, self.hits, self.verified)
        self.on_citations(len(kept), dropped)
        return kept


class Formatter:
    """Builds OpenAI-shaped responses and stream chunks for `text_completion` or `chat.completion`."""

    def __init__(self, state, kind: str, params, handles, echo: list[str],
                 grounding: Grounding | None = None):  # fmt: skip
        self.state, self.kind, self.params, self.handles, self.echo = state, kind, params, handles, echo
        self.grounding = grounding
        self.answers: dict[int, list[str]] = {}  # choice index → its text so far (streaming with grounding)
        self.chat = kind == "chat.completion"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.started: set[int] = set()
        self.n = params.n

    def _token(self, tid: int) -> str:
        cache = self.state.token_text
        if tid not in cache:
            cache[tid] = self.state.tokenizer.decode([tid], skip_special_tokens=False)
        return cache[tid]

    def _logprobs(self, lps: list[dict] | None, offset: int = 0):
        if lps is None or self.params.logprobs is None:
            return None
        if self.chat:
            return {"content": [{"token": self._token(x["id"]), "logprob": x["logprob"],
                                 "bytes": list(self._token(x["id"]).encode()),
                                 "top_logprobs": [{"token": self._token(t), "logprob": lp,
                                                   "bytes": list(self._token(t).encode())} for t, lp in x["top"]]}
                                for x in lps]}  # fmt: skip
        return {"tokens": [self._token(x["id"]) for x in lps], "token_logprobs": [x["logprob"] for x in lps],
                "top_logprobs": [{self._token(t): lp for t, lp in x["top"]} for x in lps],
                "text_offset": [offset] * len(lps)}  # fmt: skip

    def usage(self) -> dict[str, int]:
        p = sum(h.stats.prompt_tokens for h in self.handles)
        c = sum(h.stats.completion_tokens for h in self.handles)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def full(self, per_handle: list[list[Event]]) -> dict[str, Any]:
        choices = []
        for i, events in enumerate(per_handle):
            for j in range(self.n):
                evs = [e for e in events if e.index == j]
                text = self.echo[i] + "".join(e.text for e in evs)
                reason = next((e.finish_reason for e in evs if e.finish_reason), None)
                lps = [x for e in evs if e.logprobs for x in e.logprobs] if self.params.logprobs is not None else None
                merged = self._logprobs(lps)
                if self.chat:
                    choices.append({"index": i * self.n + j, "message": {"role": "assistant", "content": text},
                                    "logprobs": merged, "finish_reason": reason})  # fmt: skip
                    if self.grounding is not None:
                        choices[-1]["citations"] = self.grounding.citations(text)
                else:
                    choices.append({"index": i * self.n + j, "text": text, "logprobs": merged,
                                    "finish_reason": reason})  # fmt: skip
        out = {"id": self.id, "object": self.kind, "created": self.created, "model": self.state.name,
               "choices": choices, "usage": self.usage(),
               "timings": self.handles[0].stats.timings()}  # fmt: skip
        if self.grounding is not None:
            out["context"] = self.grounding.context()
        return out

    def _wrap(self, choice: dict) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.state.name, "choices": [choice]}

    def first_chunks(self) -> list[dict]:
        out = []
        for i in range(len(self.handles)):
            for j in range(self.n):
                if self.chat:
                    out.append(self._wrap({"index": i * self.n + j, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}))  # fmt: skip
                elif self.echo[i]:
                    out.append(self._wrap({"index": i * self.n + j, "text": self.echo[i], "logprobs": None,
                                           "finish_reason": None}))  # fmt: skip
        return out

    def chunk(self, i: int, e: Event) -> dict | None:
        if not e.text and e.finish_reason is None and self.params.logprobs is None:
            return None  # a token that produced no visible text yet (e.g. half a UTF-8 character)
        index = i * self.n + e.index
        lps = self._logprobs(e.logprobs)
        if self.chat:
            delta = {"content": e.text} if e.text else {}
            choice = {"index": index, "delta": delta, "logprobs": lps, "finish_reason": e.finish_reason}
        else:
            choice = {"index": index, "text": e.text, "logprobs": lps, "finish_reason": e.finish_reason}
        if self.grounding is not None:  # a choice's last chunk carries its citations, found in its whole text
            self.answers.setdefault(index, []).append(e.text)
            if e.finish_reason is not None:
                choice["citations"] = self.grounding.citations("".join(self.answers.pop(index)))
        out = self._wrap(choice)
        if e.finish_reason is not None:
            out["timings"] = self.handles[i].stats.timings()
            if self.grounding is not None:
                out["context"] = self.grounding.context()
        return out

    def usage_chunk(self) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.state.name, "choices": [],
                "usage": self.usage()}  # fmt: skip
