"""What question answering costs a server: `llmchain serve MODEL --index INDEX` against the same model
served without --index, and /v1/embeddings throughput.

It indexes DOCS (`llmchain index`, reused if the file exists) and starts `llmchain serve` as a user would
(a random model of a CPU preset: the answers are nonsense, the costs are real) twice, one server at a
time: first without --index, then with it. Each question (the first words of passages of the index) is a
greedy streamed chat request of `--max-tokens` tokens (ignore_eos, so every answer has the same length);
the --index server gets each question twice, with retrieval and with `"retrieval": false`, alternating.
Reported: time to the first content token (TTFT) and end-to-end latency (median, p90), prompt tokens,
the server's retrieval time per request (its `retrieval_latency_seconds` histogram), the server's
resident memory (serve process + engine process, after the requests), and texts/s of /v1/embeddings
(32 passages per request, float and base64) through the `openai` client, with how many passages it
cut to the encoder's limit.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/serve_qa.py --docs ../shared/data/web_html_articles/html
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import build_model  # noqa: E402  (benchmarks/serve.py: a random model of a preset)

KEY = "sk-bench"


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return float(re.search(rf"^llmchain:{name}{{[^}}]*}} (\S+)$", text, re.M).group(1))


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and all its descendants (the engine process, multiprocessing's
    helper), in MB (Linux /proc; a child is listed under the thread that started it)."""
    kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        kb += int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M).group(1))
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return kb / 1024


def start_server(cli: list[str], model: Path, port: int, env: dict, extra: list[str]) -> subprocess.Popen:
    server = subprocess.Popen([*cli, "serve", str(model), "--port", str(port), "--api-key", KEY, *extra], env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not start")


def ask(client, name: str, q: str, max_tokens: int, retrieval: bool | None) -> dict:
    """One streamed greedy chat request: TTFT (first chunk with content), end-to-end time, prompt tokens
    and the number of passages the server put in the prompt."""
    extra = {"ignore_eos": True, **({} if retrieval is None else {"retrieval": retrieval})}
    t0 = time.perf_counter()
    ttft, usage, context = None, None, []
    stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": q}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra)  # fmt: skip
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            usage = chunk.usage
        context = (chunk.model_extra or {}).get("context", context)
    end = time.perf_counter() - t0
    return {"ttft": ttft if ttft is not None else end, "e2e": end, "prompt": usage.prompt_tokens,
            "context": len(context or [])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/llmchain-bench-qa"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--port", type=int, default=8731)
    args = ap.parse_args()
    import numpy as np
    import openai

    from llmchain.rag.index import Index

    args.work_dir.mkdir(parents=True, exist_ok=True)
    index = args.work_dir / "docs.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cli = [sys.executable, "-m", "llmchain"]
    if not index.is_file():
        t0 = time.perf_counter()
        subprocess.run([*cli, "index", str(args.docs), "--out", str(index)], check=True, env=env)
        print(f"index built in {time.perf_counter() - t0:.1f} s")
    with Index.open(index) as idx:
        rows = idx.conn.execute("SELECT text FROM passages ORDER BY id").fetchall()
    passages = [r[0] for r in rows]
    step = max(len(passages) // args.questions, 1)
    questions = [" ".join(p.split()[:10]) for p in passages[::step][: args.questions]]
    model = build_model(args.preset, 4096, args.work_dir / args.preset)
    url = f"http://127.0.0.1:{args.port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    runs: dict[str, list[dict]] = {"no --index": [], "--index, retrieval on": [], "--index, retrieval off": []}
    rss = {}
    server = start_server(cli, model, args.port, env, [])
    try:  # the baseline: the same model and questions, no index
        name = client.models.list().data[0].id
        ask(client, name, "warm-up", args.max_tokens, None)
        runs["no --index"] = [ask(client, name, q, args.max_tokens, None) for q in questions]
        rss["no --index"] = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    server = start_server(cli, model, args.port, env, ["--index", str(index), "--index-k", str(args.k)])
    try:
        ask(client, name, "warm-up", args.max_tokens, True)
        for q in questions:
            for retrieval in (True, False):
                key = "--index, retrieval on" if retrieval else "--index, retrieval off"
                runs[key].append(ask(client, name, q, args.max_tokens, retrieval))
        rss["--index"] = rss_mb(server.pid)
        ret_sum, ret_n = metric(url, "retrieval_latency_seconds_sum"), metric(url, "retrieval_latency_seconds_count")
        enc_name = client.models.list().data[1].id
        batches = [passages[i : i + 32] for i in range(0, min(len(passages), 32 * 20), 32)]
        speed, cut = {}, 0
        for fmt in ("float", "base64"):
            t0 = time.perf_counter()
            for b in batches:
                e = client.embeddings.create(model=enc_name, input=b, encoding_format=fmt)
                assert len(e.data) == len(b)
                cut += sum(bool(d.model_extra.get("truncated")) for d in e.data)
            speed[fmt] = sum(map(len, batches)) / (time.perf_counter() - t0)
        rss["--index, after embeddings"] = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def ms(xs):
        return f"{statistics.median(xs) * 1e3:.0f} ({np.percentile(xs, 90) * 1e3:.0f})"

    print(f"\nindex: {len(passages)} passages from {args.docs}; model: preset {args.preset} (random); "
          f"{len(questions)} questions, k={args.k}, {args.max_tokens} tokens per answer (ignore_eos), greedy, "
          "streamed, one request at a time")  # fmt: skip
    print(f"server-side retrieval (encode query + hybrid search + quote checks): mean {ret_sum / ret_n * 1e3:.1f} ms")
    print("\n| server | TTFT ms, median (p90) | request ms, median (p90) | prompt tokens (mean) | passages in prompt |")
    print("|---|---:|---:|---:|---:|")
    for key, rs in runs.items():
        print(f"| {key} | {ms([r['ttft'] for r in rs])} | {ms([r['e2e'] for r in rs])} | "
              f"{statistics.mean(r['prompt'] for r in rs):.0f} | {statistics.mean(r['context'] for r in rs):.1f} |")
    print("\nserver RSS (serve + engine processes): " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    n = sum(map(len, batches))
    print(f"/v1/embeddings ({enc_name}, 32 passages per request, {n} passages): float {speed['float']:.0f} texts/s, "
          f"base64 {speed['base64']:.0f} texts/s; {cut // 2} of the {n} passages were over the encoder's limit "
          "(embedded cut, flagged `truncated`)")  # fmt: skip


if __name__ == "__main__":
    main()
