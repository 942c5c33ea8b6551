"""`POST /v1/explain` on a server serving a classifier: token attributions of its prediction, as JSON.

    {"input": "text" | ["text", ...], "label": null | "name", "methods": ["ig", "occlusion"]}
    → {"object": "list", "model", "data": [{"index", "label", "probability", "truncated", "tokens": [...]}]}

At most 8 texts a request (IG runs the model tens of times per text). An empty text or an unknown
label is a 400 naming the field; a text over the model's limit is explained truncated and says so.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXTS = 8


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | list[str] = Field(..., description="One text or a list of up to 8 texts.")
    label: str | None = Field(None, description="Explain this label (default: the predicted one).")
    methods: list[Literal["ig", "occlusion", "random"]] = Field(default_factory=lambda: ["ig", "occlusion"])
    steps: int = Field(50, ge=2, le=400, description="IG steps to start with.")


def add_explain_route(app, state, api_error) -> None:
    """Register POST /v1/explain on the server's app (`state.classifier`; `api_error(status, msg, param)`)."""
    lock = threading.Lock()  # one explanation at a time: IG holds the model's autograd graph

    def run(body: ExplainRequest, texts: list[str]) -> list[dict]:
        from llmchain.errors import UserError
        from llmchain.explain.classify import explain_text

        out = []
        with lock:
            for i, text in enumerate(texts):
                try:
                    ex = explain_text(state.classifier, text, label=body.label, methods=tuple(body.methods),
                                      n_steps=body.steps)  # fmt: skip
                except UserError as e:
                    field = "label" if "label" in str(e) else "input"
                    raise api_error(400, f"input[{i}]: {e}" if field == "input" else str(e), field) from None
                out.append({"index": i, **ex.to_json()})
        return out

    @app.post("/v1/explain")
    async def explain(body: ExplainRequest):
        state.check(body.model, kind="classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > MAX_TEXTS:
            raise api_error(400, f"input must hold 1 to {MAX_TEXTS} texts", "input")
        data = await asyncio.to_thread(run, body, texts)
        return {"id": f"explain-{uuid.uuid4().hex}", "object": "list", "model": state.name, "data": data}
