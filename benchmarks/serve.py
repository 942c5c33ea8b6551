"""Serving benchmark, measured the way vLLM's `benchmark_serving` does it.

For a model of a CPU preset (random weights, as vLLM's "random" dataset: fixed input/output
lengths with ignore_eos), at each concurrency level it sends `--num-prompts` streaming completion
requests (at most `concurrency` in flight) and reports TTFT, TPOT, ITL (mean/p50/p99), request
throughput and output tokens/s against:

  * `llmchain serve` with continuous batching (`--max-batch-size 64`),
  * the same server with `--max-batch-size 1` (one sequence at a time),
  * Hugging Face `generate` (greedy, one request at a time, same weights, same thread count) in
    fp32 and in bf16 — the server computes its matmuls in bf16 on AMX CPUs, so bf16 is the fair
    reference and fp32 is shown beside it,
  * and, for single-stream decoding without HTTP, our engine in-process.

Both servers run side by side and are measured level by level, alternating (and HF `generate` beside
the concurrency-1 level), `--rounds` times: the machine's speed drifts over minutes on a shared VM.
Tables show each system's median round; each ratio is the median of the per-round ratios, every
round's ratio printed beside it.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/serve.py --preset tiny
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
if not CORPUS.is_file():
    CORPUS = REPO / "src" / "llmchain" / "recipes" / "corpus" / "tinyshakespeare.txt"


def build_model(preset: str, vocab: int, out: Path) -> Path:
    """A tokenizer trained on tinyshakespeare + a random model of `preset`, as an HF dir."""
    import torch

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama
    from llmchain.model.presets import preset_config
    from llmchain.tokenizer import train_tokenizer

    if (out / "model" / "config.json").is_file():
        return out / "model"
    train_tokenizer(CORPUS, vocab, out / "tokenizer")
    torch.manual_seed(0)
    cfg = preset_config(preset, vocab_size=vocab, eos_token_id=0, bos_token_id=0)
    return save_model(Llama(cfg), out / "model", tokenizer_dir=out / "tokenizer")


def prompts(tokenizer_dir: Path, n: int, input_len: int, seed: int = 0) -> list[list[int]]:
    """`n` prompts of exactly `input_len` tokens, cut from random places of the corpus."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok.encode(CORPUS.read_text(encoding="utf-8")[:200_000])
    rng = random.Random(seed)
    return [ids[(s := rng.randrange(len(ids) - input_len)) : s + input_len] for _ in range(n)]


# ---- client (vLLM's metric definitions) --------------------------------------------------------------
def _request_result(t0: float, times: list[float], end: float, tokens: int) -> dict:
    """One request's timings, vLLM's way: `times` are when each output chunk arrived."""
    return {"start": t0, "ttft": times[0] - t0, "itl": [b - a for a, b in zip(times, times[1:], strict=False)],
            "e2e": end - t0, "tokens": tokens}


async def one_request(session: aiohttp.ClientSession, url: str, prompt: list[int], output_len: int) -> dict:
    body = {"prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    times, tokens = [], 0
    async with session.post(url, json=body) as r:
        r.raise_for_status()
        async for raw in r.content:  # one SSE line at a time
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"]:
                times.append(time.perf_counter())
    end = time.perf_counter()
    return _request_result(t0, times, end, tokens)


async def run_level(url: str, reqs: list[list[int]], output_len: int, concurrency: int) -> tuple[list[dict], float]:
    """The level's results and its wall time. The client is aiohttp, as in vLLM's benchmark: on this
    2-core machine it shares a core with the server it measures, and it parses a stream with a third of
    httpx's CPU (26 vs 80-94 ms for 16 × 64 tokens). The clock starts once the session exists."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:  # fmt: skip

        async def limited(p):
            async with sem:
                return await one_request(session, url, p, output_len)

        t = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in reqs))
        return results, time.perf_counter() - t


def summarize(results: list[dict], wall: float) -> dict:
    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")

    ttft = [r["ttft"] * 1e3 for r in results]
    tpot = [(r["e2e"] - r["ttft"]) / (r["tokens"] - 1) * 1e3 for r in results if r["tokens"] > 1]
    itl = [x * 1e3 for r in results for x in r["itl"]]
    out = sum(r["tokens"] for r in results)
    return {"req/s": len(results) / wall, "out tok/s": out / wall, "ttft": ttft, "tpot": tpot, "itl": itl,
            "ttft_mean": statistics.mean(ttft), "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "tpot_mean": statistics.mean(tpot), "tpot_p50": pct(tpot, 50), "tpot_p99": pct(tpot, 99),
            "itl_mean": statistics.mean(itl) if itl else float("nan"), "itl_p50": pct(itl, 50),
            "itl_p99": pct(itl, 99)}  # fmt: skip


@contextlib.contextmanager
def server(model: Path, batch: int, threads: int, warm: list[list[int]]):
    """`llmchain serve` with this --max-batch-size, started, warmed up and ready: yields its base URL."""
    port = 18000 + batch
    cmd = [sys.executable, "-m", "llmchain", "serve", str(model), "--port", str(port), "--max-batch-size",
           str(batch), "--max-queue", "4096", "--threads", str(threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server {' '.join(cmd)} did not start")
            time.sleep(0.2)
        asyncio.run(run_level(base + "/v1/completions", warm, 8, len(warm)))  # warm-up
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure_interleaved(model: Path, batches: list[int], levels: list[int], reqs_for, output_len: int,
                        threads: int, rounds: int, references: dict) -> dict:  # fmt: skip
    """Every server (one per --max-batch-size, all started up front; an idle one costs no CPU) at every
    level, one after another, `rounds` times, and each in-process reference (`references`: name → a
    function of the prompts) beside the concurrency-1 level: {system: {level: [summary per round]}}.
    On a shared machine whose speed drifts over minutes, measuring one system after the other skews
    their ratio; interleaved, each round compares them under the same conditions."""
    out: dict = {b: {c: [] for c in levels} for b in [*batches, *references]}
    with contextlib.ExitStack() as stack:
        bases = {b: stack.enter_context(server(model, b, threads, reqs_for(2)[:2])) for b in batches}
        for r in range(rounds):
            for c in levels:
                systems = [*batches, *(references if c == 1 else [])]
                for b in systems if r % 2 == 0 else systems[::-1]:  # alternate who goes first: drift cancels
                    if b in references:
                        out[b][c].append(references[b](reqs_for(c)))
                        continue
                    results, wall = asyncio.run(run_level(bases[b] + "/v1/completions", reqs_for(c), output_len, c))
                    out[b][c].append(summarize(results, wall))
                line = "  ".join(f"{b}: {out[b][c][-1]['out tok/s']:.1f}" for b in systems)
                print(f"  round {r + 1}/{rounds}, concurrency {c:>2}: out tok/s by --max-batch-size or system: {line}",
                      flush=True)  # fmt: skip
    return out


def median_round(runs: list[dict]) -> dict:
    """The round with the median output tokens/s (its latencies come with it)."""
    return sorted(runs, key=lambda m: m["out tok/s"])[(len(runs) - 1) // 2]


def hf_generate(model: Path, output_len: int, threads: int, dtype: str = "float32"):
    """HF transformers `generate`, greedy, one request at a time, weights in `dtype`; timings from a
    streamer. Returns a function of the prompts → their summary (loaded and warmed up once)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def one(p):
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(torch.tensor([p]), max_new_tokens=output_len, min_new_tokens=output_len,
                              do_sample=False, streamer=clock, pad_token_id=0)  # fmt: skip
        end = time.perf_counter()
        times = clock.times[1:]  # the first put() is the prompt
        return _request_result(t0, times, end, out.shape[1] - len(p))

    def run(reqs: list[list[int]]) -> dict:
        t = time.perf_counter()
        results = [one(p) for p in reqs]
        return summarize(results, time.perf_counter() - t)

    one([1, 2, 3])  # warm-up
    return run


def engine_in_process(model: Path, reqs: list[list[int]], output_len: int, batch: int, threads: int) -> dict:
    """The engine without HTTP, one request at a time: what single-stream decoding costs by itself."""
    from transformers import AutoTokenizer

    from llmchain.infer.engine import Engine
    from llmchain.infer.sampling import SamplingParams
    from llmchain.model.io import load_model

    engine = Engine(load_model(model), AutoTokenizer.from_pretrained(model), max_batch_size=batch,
                    threads=threads).start()  # fmt: skip
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)

    def one(p):
        t0 = time.perf_counter()
        times = [time.perf_counter() for _ in engine.submit(p, params).iter_events()]
        return _request_result(t0, times, times[-1], len(times))

    try:
        one(reqs[0][:8])  # warm-up
        t = time.perf_counter()
        results = [one(p) for p in reqs]
        return summarize(results, time.perf_counter() - t)
    finally:
        engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--prompts-per-level", type=int, default=2, help="num prompts = max(8, this × concurrency)")
    ap.add_argument("--batch", type=int, default=64, help="--max-batch-size of the continuous-batching server")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every system (same for all)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both servers; tables show the median")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "llmchain-bench-serve")
    args = ap.parse_args()

    model = build_model(args.preset, args.vocab, args.work_dir / args.preset)
    pool = prompts(model, max(8, args.prompts_per_level * max(args.concurrency)), args.input_len)

    def reqs_for(c):
        return pool[: max(8, args.prompts_per_level * c)]

    from llmchain.infer.forward import bf16_supported

    load = os.getloadavg()[0]
    print(f"model: preset {args.preset} ({model}), input {args.input_len} / output {args.output_len} tokens, "
          f"threads {args.threads}, load average {load:.1f} on {os.cpu_count()} CPUs; server matmuls in "
          f"{'bf16 (AMX)' if bf16_supported() else 'fp32'}", flush=True)  # fmt: skip
    refs = {f"HF {dt}": hf_generate(model, args.output_len, args.threads, dt) for dt in ("float32", "bfloat16")}
    if 1 not in args.concurrency:
        refs = {}
    runs = measure_interleaved(model, [args.batch, 1], args.concurrency, reqs_for, args.output_len, args.threads,
                               args.rounds, refs)  # fmt: skip
    ours = {c: median_round(runs[args.batch][c]) for c in args.concurrency}
    one = {c: median_round(runs[1][c]) for c in args.concurrency}
    hf = {dt: median_round(runs[f"HF {dt}"][1]) for dt in ("float32", "bfloat16") if refs}
    eng = {b: engine_in_process(model, reqs_for(1), args.output_len, b, args.threads) for b in (args.batch, 1)}

    head = ("| system | conc. | req/s | out tok/s | TTFT mean / p50 / p99 ms | TPOT mean / p50 / p99 ms | "
            "ITL mean / p50 / p99 ms |")  # fmt: skip
    print("\n" + head + "\n|---|---:|---:|---:|---:|---:|---:|")

    def row(name, c, m):
        f = lambda k: f"{m[k + '_mean']:.1f} / {m[k + '_p50']:.1f} / {m[k + '_p99']:.1f}"  # noqa: E731
        print(f"| {name} | {c} | {m['req/s']:.2f} | {m['out tok/s']:.1f} | {f('ttft')} | {f('tpot')} | {f('itl')} |")

    for c in args.concurrency:
        row(f"llmchain serve (batch {args.batch})", c, ours[c])
        row("llmchain serve (batch 1)", c, one[c])
    for dt, m in hf.items():
        row(f"HF generate (one at a time, {dt})", 1, m)
    for b, m in eng.items():
        row(f"llmchain engine in-process, no HTTP (batch {b})", 1, m)
    print()
    for c in args.concurrency:  # per round: the two servers ran back to back, under the same conditions
        ratios = sorted(a["out tok/s"] / b["out tok/s"] for a, b in zip(runs[args.batch][c], runs[1][c], strict=True))
        target = " (target ≥ 8x)" if c == 16 else ""
        print(f"continuous batching vs batch 1 at concurrency {c}: {statistics.median(ratios):.1f}x output tokens/s, "
              f"median of {len(ratios)} rounds (each: {', '.join(f'{x:.1f}' for x in ratios)}){target}")  # fmt: skip
    for dt in hf:  # per round, as above: HF ran beside the servers' concurrency-1 level
        per = {b: sorted(h["tpot_mean"] / o["tpot_mean"] for h, o in zip(runs[f"HF {dt}"][1], runs[b][1], strict=True))
               for b in (args.batch, 1)}  # fmt: skip
        each = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(f"single-stream decode (TPOT mean) vs HF generate {dt}: {statistics.median(per[args.batch]):.2f}x "
              f"faster, batch-{args.batch} server (each round: {each(per[args.batch])}); "
              f"{statistics.median(per[1]):.2f}x, batch-1 server (each: {each(per[1])}); in-process engine "
              f"(not interleaved): {hf[dt]['tpot_mean'] / eng[args.batch]['tpot_mean']:.2f}x (batch {args.batch}), "
              f"{hf[dt]['tpot_mean'] / eng[1]['tpot_mean']:.2f}x (batch 1) (target ≥ 1.5x)")  # fmt: skip

if __name__ == "__main__":
    main()
