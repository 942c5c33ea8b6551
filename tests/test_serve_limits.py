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
        assert r.status_code == 503 and r.json() == {"status": "failed"}  # the why (with paths): log only
        r = client.post("/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_load_failed" and str(tmp_path) not in r.text


@pytest.mark.parametrize("public_metrics", [False, True])
def test_metrics_follow_the_api_key_unless_public(tmp_path, public_metrics):
    from starlette.testclient import TestClient

    (tmp_path / "config.json").write_text("{}")  # the gate answers before any model is needed
    app = create_app(ServeOptions(model_dir=str(tmp_path), api_key="k", public_metrics=public_metrics),
                     load_in_background=False)  # fmt: skip
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == (200 if public_metrics else 401)
        assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        for path in ("/docs", "/openapi.json", "/v1/models"):  # public metrics open nothing else
            assert client.get(path).status_code == 401
        assert client.get("/openapi.json", headers={"Authorization": "Bearer k"}).status_code == 200


def test_serve_options_have_one_definition_in_serve_config():
    from dataclasses import fields

    from llmchain.config import ServeConfig
    from llmchain.serve.worker import EngineSpec

    defaults = ServeConfig()
    opts = ServeOptions(model_dir="m")
    assert all(getattr(opts, name) == getattr(defaults, name) for name in ServeConfig.model_fields)
    spec = EngineSpec("m")
    assert all(getattr(spec, f.name) == getattr(defaults, f.name) for f in fields(EngineSpec)[1:])  # not model_dir
    assert EngineSpec.from_options(ServeOptions(model_dir="m", max_queue=3)).max_queue == 3


def test_cli_serve_passes_the_auth_options_to_the_app(tmp_path, monkeypatch):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "serve.yaml").write_text("max_body_bytes: 4096\nport: 8123\n")
    yaml = str(tmp_path / "serve.yaml")
    code, _, err = run_cli("serve", str(tmp_path), "--api-key", "k", "--public-metrics", "-c", yaml)
    assert code == 0, err
    guard = started["app"]
    assert guard.api_key == "k" and guard.max_body == 4096 and started["port"] == 8123
    assert not guard._needs_key("/metrics") and guard._needs_key("/docs") and guard._needs_key("/v1/models")
    code, _, err = run_cli("serve", str(tmp_path), "--api-key", "k")
    assert code == 0, err
    assert started["app"]._needs_key("/metrics")
