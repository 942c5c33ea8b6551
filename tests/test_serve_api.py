"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client (and httpx)."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import LiveServer

KEY = "sk-test-key"
PROMPTS = ["First Citizen:", "Before we proceed any further,", "You are all resolved", "ROMEO:", "What say you?",
           "Speak, speak.", "O, she doth teach", "Good morrow, cousin", "Let us kill him", "a", "the king is",
           "MENENIUS:", "Our business is not", "Hear me speak.", "We are accounted poor", "Nay, but speak"]  # fmt: skip


@pytest.fixture(scope="module")
def server(serve_model_dir):
    d = serve_model_dir()
    app = create_app(ServeOptions(model_dir=str(d), served_model_name="tiny", api_key=KEY, max_batch_size=8,
                                  max_queue=64, max_model_len=512, max_body_bytes=64 * 1024, threads=1))  # fmt: skip
    with LiveServer(app) as srv:
        srv.model_dir = d
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def metric(server, name: str, label: str = "") -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    m = re.search(rf"^llmchain:{name}{{[^}}]*{re.escape(label)}[^}}]*}} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    card = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    assert card["root"] == "tiny" and str(server.model_dir) not in json.dumps(card)  # named, never located
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "chat.js" in page.text


def test_completions_plain_and_streamed_agree(client):
    r = client.completions.create(model="tiny", prompt="To be, or not", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens == 12 or r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["timings"]["predicted_n"] == r.usage.completion_tokens
    chunks = list(client.completions.create(model="tiny", prompt="To be, or not", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_chat_plain_and_streamed_agree(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=2)  # fmt: skip
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_sse_wire_format_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_32_concurrent_greedy_requests_match_each_alone(client):
    def ask(prompt):
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
        return r.choices[0].text

    alone = {p: ask(p) for p in PROMPTS}
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, PROMPTS * 2))
    assert together == [alone[p] for p in PROMPTS * 2]
    assert len(set(alone.values())) > 8


def test_stop_strings_across_token_boundaries(client):
    r = client.completions.create(model="tiny", prompt="Before we proceed", max_tokens=30, temperature=0,
                                  logprobs=0, extra_body={"ignore_eos": True})  # fmt: skip
    full, tokens = r.choices[0].text, r.choices[0].logprobs.tokens
    # a stop string made of the end of one token and the start of the next (where tokens decode cleanly)
    for k in range(len(tokens) - 2, 1, -1):
        tail = "".join(tokens[k:])
        if "\ufffd" in tail or not full.endswith(tail) or not tokens[k] or not tokens[k + 1]:
            continue
        stop = tokens[k][-2:] + tokens[k + 1][:2]
        break
    else:
        pytest.fail("no clean token boundary in the seeded model's output: the stop cannot be planted")
    expected = full[: full.index(stop)]
    r2 = client.completions.create(model="tiny", prompt="Before we proceed", max_tokens=30, temperature=0,
                                   stop=[stop], extra_body={"ignore_eos": True})  # fmt: skip
    assert r2.choices[0].text == expected and r2.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="Before we proceed", max_tokens=30, temperature=0,
                                         stop=stop, stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    pieces = [c.choices[0].text for c in streamed]
    assert "".join(pieces) == expected and stop not in "".join(pieces)


def test_client_disconnect_frees_the_slot(server):
    aborted = metric(server, "request_success_total", 'finished_reason="abort"')
    body = {"prompt": "Now is the winter", "max_tokens": 480, "temperature": 0, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=headers) as r:
        it = r.iter_lines()
        next(it), next(it)  # a couple of tokens arrived: the sequence is running
        assert metric(server, "kv_slots_used") >= 1
    # not streaming: give up waiting after a moment
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=httpx.Timeout(5.0, read=0.01))
    deadline = time.time() + 20
    while metric(server, "kv_slots_used") > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "kv_slots_used") == 0
    # the streamed request is always aborted; the fused C decode step can finish the non-streamed one's 480
    # tokens before the server sees its client go, so that one counts as aborted or finished
    assert metric(server, "request_success_total", 'finished_reason="abort"') in (aborted + 1, aborted + 2)


def test_errors_have_openai_shape_and_status(server, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=1, temperature=-1)
    assert e.value.body["param"] == "temperature"
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/completions", headers=headers, json={"prompt": "word " * 1000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(server.url + "/v1/completions", headers=headers, json={"prompt": "x" * 100_000})
    assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", headers=headers, content=b"{not json")
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/chat/completions", headers=headers,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "frobnicate": 1})  # fmt: skip
    assert r.status_code == 200  # unknown fields are ignored, as vLLM does


def test_metrics_use_vllm_names(server):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("time_to_first_token_seconds_bucket", "inter_token_latency_seconds_count",
                 "e2e_request_latency_seconds_sum", "request_queue_time_seconds_count", "num_requests_running",
                 "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens_total", "generation_tokens_total",
                 "request_success_total"):  # fmt: skip
        assert f"llmchain:{name}" in text
    assert metric(server, "generation_tokens_total") > 0


def test_with_an_api_key_only_the_page_its_files_and_health_are_public(server):
    for path in ("/", "/static/chat.js", "/health"):
        assert httpx.get(server.url + path).status_code == 200, path
    for path in ("/v1/models", "/docs", "/redoc", "/openapi.json", "/metrics", "/no-such-page"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    for path in ("/docs", "/openapi.json", "/metrics"):
        assert httpx.get(server.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_logit_bias_steers_sampling_and_its_keys_must_be_token_ids(server, client):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.model_dir)
    forced = tok.encode(" the")[0]
    r = client.completions.create(model="tiny", prompt="To be", max_tokens=3, temperature=0,
                                  logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})  # fmt: skip
    assert r.choices[0].text == tok.decode([forced] * 3)
    plain = client.completions.create(model="tiny", prompt="To be", max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True})  # fmt: skip
    assert plain.choices[0].text != r.choices[0].text  # the bias, not the model, chose those tokens
    for bias, why in (({"abc": 1}, "valid integer"), ({"99999": 1}, "token ids in [0,"),
                      ({"5": 101}, "[-100, 100]")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="To be", max_tokens=1, logit_bias=bias)
        assert e.value.status_code == 400 and why in e.value.body["message"]
