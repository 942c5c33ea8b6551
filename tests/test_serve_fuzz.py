"""Hostile input against a live server: no client input gets a 5xx, no error body shows an exception's
text or a path, and the server still answers afterwards. Schemathesis generates bodies from the
server's own OpenAPI schema (bounded and derandomized: the same examples every run); a hand list
covers what a schema-driven fuzzer does not produce (lone surrogates, NaN, 10^4-deep JSON, 30 MB)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import LiveServer

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
# what an error body must never hold: a traceback, an exception's class name, a source file, a path
LEAKS = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b|\.py\b|site-packages|/tmp/|/home/|/work/")


@pytest.fixture(scope="module")
def model_dir(serve_model_dir):
    return serve_model_dir()


@pytest.fixture(scope="module")
def server(model_dir):
    # the default body limit (1 MiB) and a short context, so valid-but-huge max_tokens end quickly
    app = create_app(ServeOptions(model_dir=str(model_dir), served_model_name="tiny", api_key=KEY,
                                  max_batch_size=4, max_queue=64, max_model_len=96, threads=1))  # fmt: skip
    with LiveServer(app) as srv:
        yield srv


def _check_error_body(r: httpx.Response, model_dir) -> None:
    """An error answer is OpenAI's shape, with our own words only."""
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) <= 500
    assert not LEAKS.search(r.text) and str(model_dir) not in r.text, r.text


def _big(n: int = 2**64) -> str:
    return str(n)


C, CHAT = "/v1/completions", "/v1/chat/completions"
USER = '"messages": [{"role": "user", "content": "hi"}]'
# (name, path, raw JSON body, expected status: an int, or "4xx")
HOSTILE = [
    ("lone surrogate prompt", C, r'{"prompt": "\ud800"}', 400),
    ("lone surrogate in a prompt list", C, r'{"prompt": ["ok", "x\udfff"]}', 400),
    ("lone surrogate stop", C, r'{"prompt": "hi", "stop": ["\ud800"]}', 400),
    ("lone surrogate chat content", CHAT, r'{"messages": [{"role": "user", "content": "\ud83d"}]}', 400),
    ("lone surrogate content part", CHAT,
     r'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}', 400),
    ("lone surrogate model", C, r'{"prompt": "hi", "model": "\ud800"}', 400),
    ("lone surrogate in an ignored field", C, r'{"prompt": "hi", "user": {"\ud800": ["\ud800"]}}', 400),
    ("lone surrogate logit_bias key", C, r'{"prompt": "hi", "logit_bias": {"\ud800": 1}}', 400),
    ("a surrogate pair is fine", C, r'{"prompt": "hi \ud83d\ude00", "max_tokens": 2}', 200),
    ("NaN temperature", C, '{"prompt": "hi", "temperature": NaN}', 400),
    ("Infinity top_p", C, '{"prompt": "hi", "top_p": Infinity}', 400),
    ("-Infinity presence_penalty", C, '{"prompt": "hi", "presence_penalty": -Infinity}', 400),
    ("NaN logit_bias value", C, '{"prompt": "hi", "logit_bias": {"5": NaN}}', 400),
    ("1e308 max_tokens", C, '{"prompt": "hi", "max_tokens": 1e308}', 400),
    ("1e999 temperature", C, '{"prompt": "hi", "temperature": 1e999}', 400),
    ("-1 max_tokens", C, '{"prompt": "hi", "max_tokens": -1}', 400),
    ("2**64 max_tokens (valid: the context bounds it)", C,
     f'{{"prompt": "hi", "max_tokens": {_big()}, "temperature": 0}}', 200),
    ("2**64 n", C, f'{{"prompt": "hi", "n": {_big()}}}', 400),
    ("-1 n", C, '{"prompt": "hi", "n": -1}', 400),
    ("n above the batch size", C, '{"prompt": "hi", "n": 16, "max_tokens": 1}', 400),
    ("2**64 top_k (valid: off)", C, f'{{"prompt": "hi", "top_k": {_big()}, "max_tokens": 2}}', 200),
    ("-2 top_k", C, '{"prompt": "hi", "top_k": -2}', 400),
    ("2**64 seed (valid)", C, f'{{"prompt": "hi", "seed": {_big()}, "max_tokens": 2}}', 200),
    ("-1 seed (valid)", C, '{"prompt": "hi", "seed": -1, "max_tokens": 2}', 200),
    ("1e308 seed", C, '{"prompt": "hi", "seed": 1e308}', 400),
    ("2**64 logprobs", C, f'{{"prompt": "hi", "logprobs": {_big()}}}', 400),
    ("2**64 token id", C, f'{{"prompt": [{_big()}]}}', 400),
    ("-1 token id", C, '{"prompt": [1, -1]}', 400),
    ("empty token list", C, '{"prompt": [[]]}', 400),
    ("empty prompt list", C, '{"prompt": []}', 400),
    ("65 prompts", C, json.dumps({"prompt": ["a"] * 65}), 400),
    ("prompt longer than the context", C, json.dumps({"prompt": "word " * 500}), 413),
    ("10^4-deep prompt", C, '{"prompt": ' + "[" * 10_000 + "]" * 10_000 + "}", 400),
    ("10^4-deep ignored field", C, '{"prompt": "hi", "x": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001, 400),
    ("400-deep ignored field (parses)", C,
     '{"prompt": "hi", "max_tokens": 1, "x": ' + "[" * 400 + "]" * 400 + "}", 200),
    ("logit_bias non-integer key", C, '{"prompt": "hi", "logit_bias": {"abc": 1}}', 400),
    ("logit_bias fractional key", C, '{"prompt": "hi", "logit_bias": {"1.5": 1}}', 400),
    ("logit_bias key beyond the vocab", C, '{"prompt": "hi", "logit_bias": {"99999999": 1}}', 400),
    ("logit_bias negative key", C, '{"prompt": "hi", "logit_bias": {"-3": 1}}', 400),
    ("logit_bias value beyond 100", C, '{"prompt": "hi", "logit_bias": {"5": 1000}}', 400),
    ("logit_bias not an object", C, '{"prompt": "hi", "logit_bias": [1, 2]}', 400),
    ("empty messages", CHAT, '{"messages": []}', 400),
    ("unknown role", CHAT, '{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
    ("messages not a list", CHAT, '{"messages": "hi"}', 400),
    ("image content part", CHAT,
     '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400),
    ("a message without role", CHAT, '{"messages": [{"content": "hi"}]}', 400),
    ("max_completion_tokens 0", CHAT, "{" + USER + ', "max_completion_tokens": 0}', 400),
    ("top_logprobs 2**64", CHAT, "{" + USER + f', "logprobs": true, "top_logprobs": {_big()}}}', 400),
    ("a 600 kB model name", C, json.dumps({"prompt": "hi", "model": "m" * 600_000}), 404),
    ("unknown model", C, '{"prompt": "hi", "model": "gpt-4"}', 404),
    ("classify on a generative model", "/v1/classify", '{"input": "hi"}', 400),
    ("classify with a lone surrogate", "/v1/classify", r'{"input": ["\ud800"]}', 400),
    ("a JSON array", C, "[1, 2, 3]", 400),
    ("a JSON string", C, '"prompt"', 400),
    ("null", C, "null", 400),
    ("empty body", C, "", 400),
    ("broken JSON", C, '{"prompt": "hi"', 400),
    ("streamed and invalid", C, '{"prompt": "hi", "stream": true, "temperature": -1}', 400),
    ("stream_options not an object", C, '{"prompt": "hi", "stream": true, "stream_options": 3}', 400),
]


@pytest.mark.parametrize(("name", "path", "body", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_gets_a_clean_answer(server, model_dir, name, path, body, expected):
    r = httpx.post(server.url + path, content=body.encode("utf-8", "surrogatepass"), headers=JSON, timeout=60)
    if expected == "4xx":
        assert 400 <= r.status_code < 500, r.text
    else:
        assert r.status_code == expected, r.text
    if r.status_code != 200:
        _check_error_body(r, model_dir)


def test_hostile_bytes_and_headers_get_4xx(server, model_dir):
    url = server.url + C
    answers = {
        "non-UTF-8 body": httpx.post(url, content=b'{"prompt": "\xff\xfe\xfa"}', headers=JSON),
        "text/plain body": httpx.post(url, content=b'{"prompt": "hi"}',
                                      headers={**AUTH, "Content-Type": "text/plain"}),  # fmt: skip
        "no content type": httpx.post(url, content=b'{"prompt": "hi"}', headers=AUTH),
        "form body": httpx.post(url, data={"prompt": "hi"}, headers=AUTH),
        "no API key": httpx.post(url, json={"prompt": "hi"}),
        "a wrong API key": httpx.post(url, json={"prompt": "hi"}, headers={"Authorization": "Bearer nope"}),
        "a non-ASCII API key": httpx.post(url, json={"prompt": "hi"},
                                          headers={"Authorization": b"Bearer \xff\xfe"}),  # fmt: skip
        "GET on a POST route": httpx.get(url, headers=AUTH),
        "an unknown route": httpx.post(server.url + "/v1/nothing", json={}, headers=AUTH),
    }
    for what, r in answers.items():
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        _check_error_body(r, model_dir)
    assert answers["no API key"].status_code == answers["a non-ASCII API key"].status_code == 401


def test_a_30_mb_body_is_refused_unread(server, model_dir):
    body = b'{"prompt": "' + b"a" * (30 << 20) + b'"}'
    r = httpx.post(server.url + C, content=body, headers=JSON, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield body[:1000]
        for i in range(1000, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    try:
        r = httpx.post(server.url + C, content=chunks(), headers=JSON, timeout=60)
        assert r.status_code == 413
        _check_error_body(r, model_dir)
    except httpx.WriteError:  # the server answered 413 and closed while the upload was still going
        pass
    assert httpx.get(server.url + "/health").status_code == 200


def test_schemathesis_finds_no_server_error_and_no_leak(server, model_dir):
    """Every operation of the OpenAPI schema, with valid and invalid generated input."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    raw = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    schema = schemathesis.openapi.from_dict(raw)
    failures: list[str] = []
    calls = 0

    def fuzz(op, mode) -> None:
        # derandomize: the same examples every run, so a failure reproduces
        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            nonlocal calls
            if isinstance(case.body, dict):  # keep generation short: this checks validation, not decoding
                for k in ("max_tokens", "max_completion_tokens"):
                    if isinstance(case.body.get(k), int) and case.body[k] > 4:
                        case.body[k] = 4
                if "messages" in case.body or "prompt" in case.body:
                    case.body.setdefault("max_tokens", 4)
                if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
                    case.body["n"] = 2
            r = case.call(base_url=server.url, headers=AUTH, timeout=60)
            calls += 1
            if r.status_code >= 500 or (r.status_code >= 400 and LEAKS.search(r.text)):
                failures.append(f"{op.label} {mode.name}: {r.status_code} {r.text[:200]}")

        try:
            check()
        except Unsatisfiable:  # e.g. no invalid input exists for a GET without parameters
            pass

    for result in schema.get_all_operations():
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    assert calls >= 60  # the generators did run
    assert not failures, "\n".join(failures[:5])
    r = httpx.post(server.url + C, json={"prompt": "To be", "max_tokens": 3, "temperature": 0}, headers=AUTH)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_the_server_still_answers_after_all_of_it(server):
    for path, body in ((C, r'{"prompt": "\ud800"}'), (C, '{"prompt": "hi", "temperature": NaN}')):
        assert httpx.post(server.url + path, content=body, headers=JSON).status_code == 400
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    r = httpx.post(server.url + CHAT, headers=AUTH, timeout=60, json=chat)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_template_errors_pass_on_the_templates_own_words_only():
    from jinja2 import TemplateError

    from llmchain.serve.api import _template_error

    e = _template_error(TemplateError("Conversation roles must alternate user/assistant"))
    assert e.status == 400 and "roles must alternate" in e.message
    e = _template_error(TypeError("can only concatenate str (not 'NoneType') in /opt/x/template.py"))
    assert e.status == 400 and "/opt" not in e.message and "NoneType" not in e.message
