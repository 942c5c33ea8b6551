"""What question answering costs a server: `llmchain serve MODEL --index INDEX` against the same server
answering the same questions with `"retrieval": false`, and /v1/embeddings throughput.

It indexes DOCS (`llmchain index`, reused if the file exists), starts `llmchain serve` as a user would
(a random model of a CPU preset: the answers are nonsense, the costs are real), and for each question
(the first words of passages of the index) sends a greedy chat request with retrieval and one without,
alternating. Reported: the server's retrieval time per request (its `retrieval_latency_seconds`
histogram), the client's end-to-end latency and prompt tokens with and without the passages, and
texts/s of /v1/embeddings (32 passages per request, float and base64) through the `openai` client.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/llmchain-bench-qa"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--questions", type=int, default=40)
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
    server = subprocess.Popen([*cli, "serve", str(model), "--port", str(args.port), "--api-key", KEY,
                               "--index", str(index), "--index-k", str(args.k)], env=env)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        name = client.models.list().data[0].id
        lat: dict[bool, list[float]] = {True: [], False: []}
        ptoks: dict[bool, list[int]] = {True: [], False: []}
        n_context = []
        for q in questions:
            for retrieval in (True, False):
                t0 = time.perf_counter()
                r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": q}],
                                                   max_tokens=16, temperature=0,
                                                   extra_body={"retrieval": retrieval})  # fmt: skip
                lat[retrieval].append(time.perf_counter() - t0)
                ptoks[retrieval].append(r.usage.prompt_tokens)
                if retrieval:
                    n_context.append(len(r.model_extra["context"]))
        ret_sum, ret_n = metric(url, "retrieval_latency_seconds_sum"), metric(url, "retrieval_latency_seconds_count")
        enc_name = client.models.list().data[1].id
        batches = [passages[i : i + 32] for i in range(0, min(len(passages), 32 * 20), 32)]
        speed = {}
        for fmt in ("float", "base64"):
            t0 = time.perf_counter()
            for b in batches:
                e = client.embeddings.create(model=enc_name, input=b, encoding_format=fmt)
                assert len(e.data) == len(b)
            speed[fmt] = sum(map(len, batches)) / (time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def ms(xs):
        return f"{statistics.median(xs) * 1e3:.0f} ms (p90 {np.percentile(xs, 90) * 1e3:.0f})"

    print(f"\nindex: {len(passages)} passages from {args.docs}; model: preset {args.preset} (random); "
          f"{len(questions)} questions, k={args.k}, max_tokens 16, greedy")  # fmt: skip
    print(f"passages in the prompt (after fitting the context): mean {statistics.mean(n_context):.1f}")
    print(f"server-side retrieval (encode query + hybrid search + quote checks): mean {ret_sum / ret_n * 1e3:.1f} ms")
    print(f"chat request, retrieval on:  {ms(lat[True])}, prompt {statistics.mean(ptoks[True]):.0f} tokens")
    print(f"chat request, retrieval off: {ms(lat[False])}, prompt {statistics.mean(ptoks[False]):.0f} tokens")
    print(f"/v1/embeddings ({enc_name}, 32 passages per request): float {speed['float']:.0f} texts/s, "
          f"base64 {speed['base64']:.0f} texts/s")  # fmt: skip


if __name__ == "__main__":
    main()
