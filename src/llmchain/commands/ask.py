"""`llmchain ask INDEX "question"`: one answer from an index's passages, with its citations checked.

Retrieval runs here; the prompt (rag/answer.py: the numbered passages, then the question) goes to an
in-process engine (--model) or to any OpenAI-compatible server (--base-url); the citations are the
[n] markers of the answer whose passage quotes its source exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llmchain.errors import UserError


def ask(
    index: Path = typer.Argument(..., help="An index built by `llmchain index`."),
    question: str = typer.Argument(..., help="The question."),
    model: Path = typer.Option(None, "--model", "-m", help="Answer with this model dir, in-process."),
    base_url: str = typer.Option(
        None,
        "--base-url",
        help="Answer with an OpenAI-compatible server, e.g. "
        "http://127.0.0.1:8000/v1 (`llmchain serve`, vLLM, llama.cpp, OpenAI).",
    ),
    api_key: str = typer.Option(None, "--api-key", envvar="LLMCHAIN_API_KEY", help="The server's API key."),
    model_name: str = typer.Option(
        None, "--model-name", help="The model to ask on --base-url (default: the first the server lists)."
    ),
    k: int = typer.Option(4, "--k", "-k", min=1, max=32, help="Passages put in the prompt."),
    mode: str = typer.Option("hybrid", "--mode", help="Retrieval: hybrid (dense + keyword scores fused), dense or "
                             "keyword."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Tokens of the answer at most."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0 = greedy."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, citations, context)."),
    timeout: float = typer.Option(300, "--timeout", min=1, help="Seconds to wait for the server's answer."),
) -> None:
    """Answer QUESTION from the passages of INDEX and print the answer, then each citation: its number,
    source, character offsets and the quoted text (checked against the source)."""
    if (model is None) == (base_url is None):
        raise UserError("give exactly one of --model MODEL_DIR and --base-url URL")
    if not question.strip():
        raise UserError("the question is empty")
    from llmchain.rag.answer import citations, grounded_messages, passage_entry, verify
    from llmchain.rag.index import MODES, Index

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: use one of {', '.join(MODES)}")

    idx = Index.open(index)
    result = idx.search(question, k=k, mode=mode)
    hits = result.hits
    messages = [{"role": "user", "content": question}]
    if model is not None:
        answer, hits = _answer_in_process(model, messages, hits, max_tokens, temperature)
    else:
        answer = _answer_remote(base_url, api_key, model_name, grounded_messages(messages, hits), max_tokens,
                                temperature, timeout)  # fmt: skip
    cites, dropped = citations(answer, hits, verify(hits, idx.source_text))
    context = [dict(passage_entry(n, h), score=h.score) for n, h in enumerate(hits, 1)]
    if as_json:
        typer.echo(json.dumps({"question": question, "answer": answer, "citations": cites,
                               "dropped_citations": dropped, "context": context,
                               "query_truncated": result.query_truncated}, ensure_ascii=False, indent=2))  # fmt: skip
        return
    typer.echo(answer.strip() or "(empty answer)")
    typer.echo("")
    if cites:
        typer.echo("Citations:")
        for c in cites:
            typer.echo(f"  [{c['index']}] {c['source']} [{c['start']}:{c['end']}]  {_quoted(c['quote'])}")
    else:
        typer.echo("The answer cites no passage. Retrieved:")
        for c in context:
            typer.echo(f"  [{c['index']}] {c['source']} [{c['start']}:{c['end']}]  {_quoted(c['quote'])}")
    if dropped:
        typer.echo(f"({dropped} citation(s) dropped: their passage no longer matches its source; re-index)",
                   err=True)  # fmt: skip


def _quoted(text: str, limit: int = 300) -> str:
    one_line = " ".join(text.split())
    return json.dumps(one_line if len(one_line) <= limit else one_line[: limit - 1] + "…", ensure_ascii=False)


def _answer_in_process(model: Path, messages: list[dict], hits: list, max_tokens: int,
                       temperature: float) -> tuple[str, list]:  # fmt: skip
    """The engine's answer, and the passages that fit its context beside max_tokens of answer."""
    from llmchain.commands.serve import check_model_dir
    from llmchain.infer.engine import load_engine
    from llmchain.infer.sampling import SamplingParams
    from llmchain.rag.answer import fit_passages, grounded_messages

    check_model_dir(model)
    engine = load_engine(model, max_batch_size=1)
    tok = engine.tokenizer
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{model}: needs a chat template (tokenizer_config.json 'chat_template')")

    def ids(hs):
        text = tok.apply_chat_template(
            grounded_messages(messages, hs), tokenize=False, add_generation_prompt=True
        )
        return tok.encode(text, add_special_tokens=False)

    room = engine.max_model_len - min(max_tokens, engine.max_model_len // 4)
    hits = fit_passages(hits, lambda hs: len(ids(hs)) <= room)
    prompt = ids(hits)
    if len(prompt) >= engine.max_model_len:
        raise UserError(
            f"the question alone is {len(prompt)} tokens; the model's context is {engine.max_model_len}"
        )
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    return engine.generate([prompt], params)[0][0].text, hits


def _answer_remote(base_url: str, api_key: str | None, model_name: str | None, messages: list[dict],
                   max_tokens: int, temperature: float, timeout: float) -> str:  # fmt: skip
    """The first choice's text from POST {base_url}/chat/completions. To our own server we add
    "retrieval": false (the passages are in the prompt already); other servers get OpenAI's fields only."""
    import httpx

    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=timeout, headers=headers) as http:
            listed = _ok(http.get(base + "/models"), base + "/models").get("data") or []
            card = next((m for m in listed if model_name in (None, m.get("id"))), None)
            if card is None:
                names = ", ".join(str(m.get("id")) for m in listed) or "none"
                raise UserError(f"--model-name {model_name}: {base} serves {names}")
            body = {
                "model": card["id"],
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            if card.get("owned_by") == "llmchain":
                body["retrieval"] = False
            reply = _ok(http.post(base + "/chat/completions", json=body), base + "/chat/completions")
    except httpx.HTTPError as e:
        raise UserError(f"--base-url {base_url}: {type(e).__name__}: {e}") from None
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{base}/chat/completions: the answer is not a chat completion") from None


def _ok(r, url: str) -> dict:
    try:
        data = r.json()
    except ValueError:
        data = None
    if r.status_code != 200 or not isinstance(data, dict):
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else r.text[:200]
        raise UserError(f"{url}: HTTP {r.status_code}: {msg}")
    return data
