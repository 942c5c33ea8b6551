"""Overload (503 + Retry-After, and the server keeps serving), model dirs without a chat template, the CLI."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import run_cli
from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import CHATML, LiveServer


@pytest.fixture(scope="module")
def plain_dir(serve_model_dir):
    return serve_model_dir(chat_template=False)


@pytest.fixture(scope="module")
def small_server(plain_dir):
    app = create_app(ServeOptions(model_dir=str(plain_dir), max_batch_size=1, max_queue=1, threads=1))
    with LiveServer(app) as srv:
        yield srv


def test_overload_answers_503_at_once_and_keeps_serving(small_server):
    url = small_server.url + "/v1/completions"
    body = {"prompt": "Now is the winter", "max_tokens": 300, "temperature": 0, "ignore_eos": True}

    def post(_):
        t = time.perf_counter()
        r = httpx.post(url, json=body, timeout=120)
        return r, time.perf_counter() - t

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(8)))
    rejected = [(r, dt) for r, dt in results if r.status_code == 503]
    served = [r for r, _ in results if r.status_code == 200]
    assert rejected and served  # 1 running + 1 waiting fit; the rest are turned away
    for r, dt in rejected:
        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        assert dt < 5  # answered at once, not after the queue drained
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in served)
    r = httpx.post(url, json={**body, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_chat_without_template_is_a_clear_400(small_server):
    r = httpx.post(small_server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "no_chat_template" and "--chat-template FILE" in err["message"]


def test_chat_template_flag_overrides(plain_dir, tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    app = create_app(ServeOptions(model_dir=str(plain_dir), chat_template=str(template), threads=1))
    with LiveServer(app) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})  # fmt: skip
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_cli_serve_rejects_a_bad_dir_and_chat_talks(tmp_path, serve_model_dir, monkeypatch):
    import io

    code, _, err = run_cli("serve", str(tmp_path))
    assert code == 2 and "no config.json" in err
    (tmp_path / "config.json").write_text("{}")
    code, _, err = run_cli("serve", str(tmp_path), "--dtype", "fp16")
    assert code == 2 and "dtype" in err and "float32" in err
    model = serve_model_dir()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/reset\nAgain\n/exit\n"))
    code, out, err = run_cli("chat", str(model), "--max-tokens", "5", "--temperature", "0")
    assert code == 0, err
    assert out.count("model> ") == 2


def test_health_is_503_until_a_model_is_loaded(tmp_path):
    from starlette.testclient import TestClient

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # no weights: loading fails
    app = create_app(ServeOptions(model_dir=str(tmp_path)), load_in_background=False)
    with TestClient(app) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        r = client.post("/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
