"""The arena's contestants: our engine in-process, or any OpenAI-compatible server over HTTP.

Both stream the answer to one user message as `Delta`s. `parse_model_spec` turns the command
line's `NAME=DIR_OR_URL` into one of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmchain.errors import UserError


@dataclass
class Delta:
    text: str
    tokens: int = 0
    finish_reason: str | None = None


class BackendError(RuntimeError):
    """The model could not answer (remote error, prompt too long): shown on its side of the battle."""


class EngineBackend:
    """A model dir served by our engine in this process (its own batching thread)."""

    def __init__(self, name: str, model_dir: str | Path, *, max_batch_size: int = 4, threads: int = 1):
        from llmchain.infer.engine import load_engine

        if not (Path(model_dir) / "config.json").is_file():
            raise UserError(f"--model {name}={model_dir}: not a model directory (no config.json)")
        self.name, self.source = name, str(Path(model_dir).resolve())
        self.engine = load_engine(model_dir, max_batch_size=max_batch_size, threads=threads)
        self.engine.start()

    def encode(self, prompt: str) -> list[int]:
        tok = self.engine.tokenizer
        if tok.chat_template:  # a chat model answers a user turn; a base model continues the text
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
            return tok.encode(text, add_special_tokens=False)
        return tok.encode(prompt)

    async def stream(self, prompt: str, params) -> AsyncIterator[Delta]:
        from llmchain.infer.requests import PromptTooLong

        try:
            handle = self.engine.submit(self.encode(prompt), params, asyncio.get_running_loop())
        except (PromptTooLong, ValueError) as e:
            raise BackendError(str(e)) from None
        finished = False
        try:
            async for ev in handle.events():
                yield Delta(ev.text, len(ev.token_ids), ev.finish_reason)
            finished = True
        finally:
            if not finished:  # the page went away mid-answer: free the slot
                handle.cancel()

    def close(self) -> None:
        self.engine.stop()


class OpenAIBackend:
    """An OpenAI-compatible server: `URL` or `URL#served-model-name` (URL with or without /v1)."""

    def __init__(self, name: str, url: str, api_key: str | None = None, timeout: float = 600.0):
        base, _, model = url.partition("#")
        base = base.rstrip("/")
        self.name, self.source = name, url
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model: str | None = model or None
        self.api_key, self.timeout = api_key, timeout

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _model_name(self, client) -> str | None:
        if self.model is None:  # the server's first model, asked once
            try:
                r = await client.get(self.base + "/models", headers=self._headers())
                self.model = r.json()["data"][0]["id"]
            except Exception:  # a server without /v1/models takes requests without a model name
                return None
        return self.model

    async def stream(self, prompt: str, params) -> AsyncIterator[Delta]:
        import httpx

        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10)) as client:
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": True,
                                    "temperature": params.temperature, "top_p": params.top_p}  # fmt: skip
            model = await self._model_name(client)
            if model:
                body["model"] = model
            if params.max_tokens:
                body["max_tokens"] = params.max_tokens
            if params.seed is not None:
                body["seed"] = params.seed
            try:
                async with client.stream("POST", self.base + "/chat/completions", json=body,
                                         headers=self._headers()) as r:  # fmt: skip
                    if r.status_code != 200:
                        detail = (await r.aread()).decode("utf-8", "replace")[:300]
                        raise BackendError(f"{self.source}: HTTP {r.status_code}: {detail}")
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        choices = json.loads(data).get("choices") or []
                        if choices:
                            text = (choices[0].get("delta") or {}).get("content") or ""
                            yield Delta(text, 1 if text else 0, choices[0].get("finish_reason"))
            except httpx.HTTPError as e:
                raise BackendError(f"{self.source}: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        pass


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`NAME=DIR_OR_URL` → (name, target); UserError naming the flag otherwise."""
    name, sep, target = spec.partition("=")
    name = name.strip()
    if not sep or not name or not target:
        raise UserError(f"--model {spec!r}: expected NAME=MODEL_DIR or NAME=http://host:port[/v1][#model]")
    if len(name) > 64 or not all(c.isalnum() or c in "-_.:" for c in name):
        raise UserError(f"--model {spec!r}: the name may hold letters, digits and - _ . : (at most 64)")
    return name, target


def open_backend(name: str, target: str, api_key: str | None = None, threads: int = 1):
    if target.startswith(("http://", "https://")):
        return OpenAIBackend(name, target, api_key=api_key)
    return EngineBackend(name, target, threads=threads)
