"""llmchain's engine against llama.cpp on the same model: single-stream TPOT, 16 streams, TTFT of 512 tokens.

For a model of a CPU preset (random weights, our tokenizer; as benchmarks/serve.py), exported to GGUF by
`llmchain export gguf` (f16 and q8_0), each system runs in a worker process of its own, loaded once:

  * llmchain: the in-process `Engine` (the fused C decode step; weights auto = bf16, and the opt-in int8),
    `--max-batch-size 16`, greedy, ignore_eos;
  * llama.cpp through its C API (PyPI `llama-cpp-cffi` 0.4.x ships its CPU library): one `llama_batch`
    per step, one sequence id per stream, greedy argmax over the logits in the worker.

Both get the same prompt ids and the same thread count (`--threads`, default 2). Measured:
  * single: one 64-token prompt, 128 greedy tokens; TPOT = (last token - first token) / 127;
  * batch16: 16 such prompts at once, decoded together; output tokens/s = 16·128 / wall (prefill included);
  * ttft512: one 512-token prompt; time to its first token.
Every round runs every task on every system, the order alternating between rounds (a shared VM drifts);
the table shows each system's median round and each ratio is the median of the per-round ratios.

Setup (this benchmark only, in no extra: the package pins huggingface-hub < 0.29 and transformers < 5,
which its CPU library does not need):

    .venv/bin/pip install cffi && .venv/bin/pip install --no-deps llama-cpp-cffi==0.4.42

(a 291 MB wheel: it also carries CUDA and Vulkan builds, never loaded here). On Debian 12 its .so needs
the `__cxa_call_terminate` symbol of a newer libstdc++: this script builds a one-line C++ shim (g++) and
starts the llama.cpp workers with it in LD_PRELOAD. Only the .so is imported, not the `llama` package.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/serve_vs_llamacpp.py --preset tiny small
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import build_model, prompts  # noqa: E402 — the serve benchmark's model and prompts

SHIM = 'extern "C" void __cxa_call_terminate(void *) noexcept { __builtin_trap(); }\n'
TASKS = ("single", "batch16", "ttft512")
IN_LEN, OUT_LEN, STREAMS, LONG = 64, 128, 16, 512


# ---- workers: read one task name per line, answer one JSON line ------------------------------------------------
def llmchain_worker(model: str, threads: int, weights: str) -> None:
    from transformers import AutoTokenizer

    from llmchain.infer.engine import Engine
    from llmchain.infer.sampling import SamplingParams
    from llmchain.model.io import load_model

    engine = Engine(load_model(model), AutoTokenizer.from_pretrained(model), max_batch_size=STREAMS,
                    threads=threads, decode_threads=threads, weights=weights, eos_token_ids=[]).start()  # fmt: skip
    decoder = engine.decoder
    info = {"decode": f"fused C step, {decoder.weights} weights ({decoder.isa})" if decoder else "PyTorch ops"}

    def run(ps: list[list[int]], n: int) -> list[list[float]]:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        handles = [engine.submit(p, params) for p in ps]
        return [[time.perf_counter() for _ in h.iter_events()] for h in handles]

    serve_tasks(lambda ps, n: (time.perf_counter(), run(ps, n)), info)


def llamacpp_worker(gguf: str, threads: int) -> None:
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("llama")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llama-cpp-cffi is not installed: pip install --no-deps llama-cpp-cffi==0.4.42 (and cffi)")
    so = next(Path(spec.submodule_search_locations[0]).glob("_llama_cpp_cpu.*.so"))
    mod_spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", so)  # not the package: its __init__
    mod = importlib.util.module_from_spec(mod_spec)  # imports a server stack we do not need
    mod_spec.loader.exec_module(mod)
    lib, ffi = mod.lib, mod.ffi
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(gguf.encode(), lib.llama_model_default_params())
    cp = lib.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 8192, 2048, 512, STREAMS
    cp.n_threads = cp.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, cp)
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    batch = lib.llama_batch_init(STREAMS * (OUT_LEN + LONG), 0, 1)

    def decode(rows: list[tuple[int, int, int, bool]]) -> list[int]:
        """rows: (token, position, sequence, wants logits) → the argmax of each row that wants logits."""
        batch.n_tokens = len(rows)
        for i, (tok, pos, seq, want) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, int(want)
            batch.seq_id[i][0] = seq
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        out = []
        for i, row in enumerate(rows):
            if row[3]:
                buf = ffi.buffer(lib.llama_get_logits_ith(ctx, i), n_vocab * 4)
                out.append(int(np.frombuffer(buf, dtype=np.float32).argmax()))
        return out

    def run(ps: list[list[int]], n: int) -> tuple[float, list[list[float]]]:
        lib.llama_kv_self_clear(ctx)
        t0 = time.perf_counter()
        rows = [(tok, i, s, i == len(p) - 1) for s, p in enumerate(ps) for i, tok in enumerate(p)]
        toks = decode(rows)
        times = [[time.perf_counter()] for _ in ps]
        for step in range(1, n):
            toks = decode([(tok, len(p) + step - 1, s, True) for s, (tok, p) in enumerate(zip(toks, ps, strict=True))])
            now = time.perf_counter()
            for t in times:
                t.append(now)
        return t0, times

    serve_tasks(run, {"decode": "llama.cpp CPU: " + ffi.string(lib.llama_print_system_info()).decode().strip()})


def serve_tasks(run, info: dict) -> None:
    """Answer tasks from stdin: `run(prompts, n)` → (start time, per prompt the times its tokens came)."""
    ps = json.loads(sys.stdin.readline())
    run([ps["single"][0][:8]], 4)  # warm-up
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        task = line.strip()
        if task == "single":
            t0, (times,) = run(ps["single"][:1], OUT_LEN)
            res = {"tpot_ms": (times[-1] - times[0]) / (len(times) - 1) * 1e3, "ttft_ms": (times[0] - t0) * 1e3}
        elif task == "batch16":
            t0, times = run(ps["batch16"], OUT_LEN)
            res = {"tok_s": sum(map(len, times)) / (max(t[-1] for t in times) - t0)}
        else:
            t0, (times,) = run(ps["ttft512"][:1], 1)
            res = {"ttft_ms": (times[0] - t0) * 1e3}
        print(json.dumps(res), flush=True)


# ---- driver ---------------------------------------------------------------------------------------------------
def shim(work: Path) -> Path:
    """A library defining `__cxa_call_terminate` (the llama.cpp wheel needs a newer libstdc++ than Debian 12's)."""
    src, out = work / "cxa_shim.cc", work / "libcxa_shim.so"
    if not out.is_file():
        src.write_text(SHIM)
        subprocess.run(["g++", "-shared", "-fPIC", "-O2", "-o", str(out), str(src)], check=True)
    return out


class Worker:
    def __init__(self, name: str, args: list[str], env: dict, ps: dict):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.proc.stdin.write(json.dumps(ps) + "\n")
        self.proc.stdin.flush()
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, task: str) -> dict:
        self.proc.stdin.write(task + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_preset(preset: str, args) -> dict:
    from llmchain.model.export import export_gguf

    work = args.work_dir / preset
    model = build_model(preset, args.vocab, work)
    ggufs = {}
    for dtype in args.gguf:
        ggufs[dtype] = work / f"model-{dtype}.gguf"
        if not ggufs[dtype].is_file():
            export_gguf(model, ggufs[dtype], dtype=dtype)
    tok_dir = work / "tokenizer"
    long = prompts(tok_dir, 1, LONG, seed=1)
    ps = {"single": prompts(tok_dir, 1, IN_LEN, seed=2), "batch16": prompts(tok_dir, STREAMS, IN_LEN, seed=3),
          "ttft512": long}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    ll_env = {**env, "LD_PRELOAD": str(shim(args.work_dir))}
    workers = [Worker(f"llmchain ({w})", ["llmchain", str(model), str(args.threads), w], env, ps) for w in args.weights]
    workers += [Worker(f"llama.cpp {d}", ["llamacpp", str(ggufs[d]), str(args.threads)], ll_env, ps) for d in ggufs]
    results: dict = {w.name: {t: [] for t in TASKS} for w in workers}
    try:
        for r in range(args.rounds):
            for task in TASKS:
                for w in workers if r % 2 == 0 else workers[::-1]:
                    results[w.name][task].append(w.ask(task))
            print(f"  {preset} round {r + 1}/{args.rounds}: " + "  ".join(
                f"{w.name} {results[w.name]['single'][-1]['tpot_ms']:.2f} ms/tok, "
                f"{results[w.name]['batch16'][-1]['tok_s']:.0f} tok/s" for w in workers), flush=True)  # fmt: skip
    finally:
        for w in workers:
            w.close()
    return {"workers": {w.name: w.info for w in workers}, "results": results}


def report(preset: str, res: dict, threads: int) -> str:
    rs = res["results"]
    med = {n: {"tpot": statistics.median(x["tpot_ms"] for x in r["single"]),
               "tok_s": statistics.median(x["tok_s"] for x in r["batch16"]),
               "ttft": statistics.median(x["ttft_ms"] for x in r["ttft512"])} for n, r in rs.items()}  # fmt: skip
    lines = [f"### `{preset}`, {threads} threads, {IN_LEN}-token prompt, {OUT_LEN} greedy tokens", "",
             "| system | TPOT single stream (ms) | 16 streams (out tok/s) | TTFT 512-token prompt (ms) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for n, m in med.items():
        lines.append(f"| {n} | {m['tpot']:.2f} | {m['tok_s']:.0f} | {m['ttft']:.1f} |")
    ours = [n for n in rs if n.startswith("llmchain")]
    refs = [n for n in rs if n.startswith("llama.cpp")]
    lines += ["", "Ratios (median of per-round ratios; > 1: llmchain is faster):", ""]
    for a in ours:
        for b in refs:
            tp = statistics.median(y["tpot_ms"] / x["tpot_ms"] for x, y in zip(rs[a]["single"], rs[b]["single"], strict=True))
            bt = statistics.median(x["tok_s"] / y["tok_s"] for x, y in zip(rs[a]["batch16"], rs[b]["batch16"], strict=True))
            tt = statistics.median(y["ttft_ms"] / x["ttft_ms"]
                                   for x, y in zip(rs[a]["ttft512"], rs[b]["ttft512"], strict=True))  # fmt: skip
            lines.append(f"- {a} vs {b}: single-stream speed ×{tp:.2f}, 16 streams ×{bt:.2f}, TTFT 512 ×{tt:.2f}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, path, threads, *rest = sys.argv[2:]
        if kind == "llmchain":
            return llmchain_worker(path, int(threads), rest[0])
        return llamacpp_worker(path, int(threads))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["tiny", "small"])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--weights", nargs="*", default=["auto", "int8"], help="llmchain engines (--weights)")
    ap.add_argument("--gguf", nargs="+", default=["f16", "q8_0"], help="llama.cpp GGUF dtypes (f32 f16 q8_0)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/llmchain-vs-llamacpp"))
    ap.add_argument("--json", type=Path, help="write the raw per-round results here")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for preset in args.preset:
        out[preset] = bench_preset(preset, args)
        print(report(preset, out[preset], args.threads), flush=True)
        for name, info in out[preset]["workers"].items():
            print(f"  {name}: {info['decode']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
