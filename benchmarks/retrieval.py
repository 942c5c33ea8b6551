"""Benchmark: retrieval quality, index build speed, query latency at scale, memory, numpy vs sqlite-vec.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/retrieval.py [--work DIR] [--queries 200]

1. Quality, on the two built-in sets of `llmchain eval retrieval` (csl: 1,000 Chinese titles → their
   abstracts among 2,000; self-instruct: 427 English instructions → their task's input + output).
   Each set's queries are split into DEV and TEST halves by the parity of sha256(query)
   (`split_dev_test`: deterministic, order-free). Hybrid's one setting, the dense weight
   (index.DENSE_WEIGHT, scaled per query by the encoder's coverage), is chosen on DEV: the grid's best
   mean recall@5 over both sets (ties → the lower weight). Reported on TEST: recall@5 / MRR@10 /
   nDCG@10 of hybrid, the former RRF fusion, dense, keyword (FTS5) and the rank-bm25 baseline, and
   hybrid recall@5 beside max(BM25, dense) on the same half. `--sizes` with no value keeps the last
   run's latency results (3.).
2. Build speed: documents/s and passages/s of `build_index` (from scratch, MiniLM on CPU) per set.
3. Latency at 10k and 100k passages: the csl index grown by repeating its passages (vectors and FTS
   rows copied under new ids), p50/p99 over `--queries` csl titles of a whole hybrid search (encode the
   query, scan, FTS5, fuse, fetch), of the dense scan alone and of the FTS5 query alone.
4. Memory per passage: index file bytes / passages, the in-memory vector matrix's bytes / passage, and
   a fresh process's resident memory growth / passage (`process_memory`: RSS after opening the index,
   reading its vectors and running 50 queries, minus RSS before, the encoder and jieba already loaded).
   `--memory` measures only that, for the grown indexes of the last run, and adds it to its results.
5. Dense scan backends: numpy (matrix in memory, the default) vs sqlite-vec (vec0 KNN table, and its
   vec_distance_cosine over the blob column) when sqlite-vec and an extension-loading sqlite3
   (pysqlite3-binary) are installed; the same top-10 ids are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np

from llmchain.config import IndexConfig
from llmchain.rag.build import build_index
from llmchain.rag.evaluate import (
    Pair,
    build_report,
    builtin_set,
    evaluate,
    recall_at,
    sources_of,
    split_dev_test,
)
from llmchain.rag.index import DENSE_WEIGHT, Index, fuse

GRID = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)
SYSTEMS = ("hybrid", "rrf", "dense", "keyword", "bm25")

DATA = Path(os.environ.get("LLMCHAIN_DATA", "/work/shared/data"))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


def quality(name: str, work: Path, fresh: bool, device: str = "cpu") -> tuple[dict, dict]:
    d = work / name
    if fresh and d.exists():
        shutil.rmtree(d)
    pairs = builtin_set(name, DATA, d / "docs")
    s = build_index([str(d / "docs")], d / "index.sqlite", IndexConfig(device=device), progress=False)
    docs = s.sources
    build = {"docs": docs, "passages": s.passages, "embedded": s.embedded, "seconds": s.seconds,
             "docs_per_s": docs / s.seconds if s.embedded else None,
             "passages_per_s": s.passages / s.seconds if s.embedded else None,
             "embed_passages_per_s": s.embedded / s.embed_seconds if s.embedded else None}
    dev, test = split_dev_test(pairs)
    with Index.open(d / "index.sqlite") as idx:
        grid = dev_grid(idx, dev)
        cfg = {"split": "TEST half: sha256(query)[0] odd", "dev": len(dev), "test": len(test),
               "dense_weight": DENSE_WEIGHT}
        report = build_report(name, idx, test, [1, 5, 10], evaluate(idx, test, [1, 5, 10], SYSTEMS), cfg)
        report["manifest_coverage"] = idx.manifest["encoder"].get("coverage")
    return build, report, grid


def dev_grid(idx: Index, dev: list[Pair]) -> dict[str, float]:
    """recall@5 on DEV of hybrid fusion for each dense weight in GRID (before the coverage scaling)."""
    with idx._lock:
        src = dict(idx.conn.execute(
            "SELECT p.id, s.name FROM passages p JOIN sources s ON s.id = p.source_id"))
    vecs = idx.encoder.encode([p.query for p in dev]).vectors
    cover = idx.encoder.coverage([p.query for p in dev])
    cands = [(idx.dense_ranking(v, 50), idx.keyword_ranking(p.query, 50))
             for p, v in zip(dev, vecs, strict=True)]
    out = {}
    for w in GRID:
        r5 = [recall_at(sources_of([src[i] for i, _ in fuse(d, k, 40, w * c)], 10), p.relevant, 5)
              for (d, k), c, p in zip(cands, cover, dev, strict=True)]
        out[str(w)] = float(np.mean(r5))
    return out


def grow(src: Path, dst: Path, n: int) -> None:
    """A copy of index `src` with its passages repeated (new ids) until it holds `n`."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    base = conn.execute("SELECT max(id) FROM passages").fetchone()[0]
    count = conn.execute("SELECT count(*) FROM passages").fetchone()[0]
    rep = 1
    while count < n:
        take = min(n - count, base)
        off = rep * base
        conn.execute('INSERT INTO passages (id, source_id, start, "end", text, n_tokens, truncated, vector) '
                     'SELECT id + ?, source_id, start, "end", text, n_tokens, truncated, vector FROM passages '
                     "WHERE id <= ? ORDER BY id LIMIT ?", (off, base, take))
        conn.execute("INSERT INTO passages_fts (rowid, terms) SELECT rowid + ?, terms FROM passages_fts "
                     "WHERE rowid <= ? ORDER BY rowid LIMIT ?", (off, base, take))
        count = conn.execute("SELECT count(*) FROM passages").fetchone()[0]
        rep += 1
    conn.commit()
    conn.execute("VACUUM")
    conn.close()


def sqlite_vec_backends(path: Path, dim: int, qvecs: np.ndarray, k: int, truth: list[list[int]]) -> dict:
    try:
        import pysqlite3
        import sqlite_vec
    except ImportError as e:
        return {"available": False, "why": f"{e.name} not installed (pip install sqlite-vec pysqlite3-binary)"}
    scratch = path.with_name(path.stem + "-vec.sqlite")
    shutil.copy(path, scratch)
    conn = pysqlite3.connect(str(scratch))
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    t = time.perf_counter()
    conn.execute(f"CREATE VIRTUAL TABLE vec USING vec0(embedding float[{dim}] distance_metric=cosine)")
    conn.execute("INSERT INTO vec (rowid, embedding) SELECT id, vector FROM passages")
    conn.commit()
    build_s = time.perf_counter() - t
    out = {"available": True, "sqlite": conn.execute("SELECT sqlite_version()").fetchone()[0],
           "sqlite_vec": conn.execute("SELECT vec_version()").fetchone()[0], "vec0_build_s": build_s}
    for label, sql in (
        ("vec0", "SELECT rowid FROM vec WHERE embedding MATCH ? AND k = ? ORDER BY distance"),
        ("scalar", "SELECT id FROM passages ORDER BY vec_distance_cosine(vector, ?) LIMIT ?"),
    ):
        times, agree = [], 0
        for q, want in zip(qvecs, truth, strict=True):
            t = time.perf_counter()
            got = [r[0] for r in conn.execute(sql, (q.astype("<f4").tobytes(), k))]
            times.append(time.perf_counter() - t)
            agree += len(set(got) & set(want)) / k
        out[label] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "top10_overlap": agree / len(truth)}
    conn.close()
    scratch.unlink()
    return out


MEMORY_PROBE = """
import json, os, sys
from pathlib import Path
from llmchain.rag.embed import Encoder
from llmchain.rag.index import Index
from llmchain.rag.passages import query_terms

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

enc = Encoder.load("minilm")
enc.encode(["warm-up"]), enc.coverage(["warm-up"]), query_terms("预热 warm-up")
before = rss()
idx = Index.open(sys.argv[1])
idx.vectors()
for q in json.loads(sys.argv[2]):
    idx.search(q, k=5)
print(json.dumps({"passages": len(idx), "rss_before": before, "rss_after": rss()}))
"""


def process_memory(path: Path, queries: list[str]) -> dict:
    """A fresh Python process's resident memory (Linux /proc) before and after it opens the index at
    `path`, reads its vectors and runs `queries` (hybrid), the encoder and jieba already loaded."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), json.dumps(queries)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    growth = r["rss_after"] - r["rss_before"]
    return {"rss_growth_bytes": growth, "rss_growth_bytes_per_passage": growth / r["passages"]}


def latency(src: Path, work: Path, n: int, queries: list[str]) -> dict:
    path = work / f"grown-{n}.sqlite"
    if not path.exists() or Index.open(path).__len__() != n:
        grow(src, path, n)
    idx = Index.open(path)
    t = time.perf_counter()
    ids, matrix = idx.vectors()
    load_s = time.perf_counter() - t
    enc = idx.encoder
    enc.encode(["warm-up"])
    idx.keyword_ranking("预热", 1)
    whole, dense, keyword = [], [], []
    qvecs = enc.encode(queries).vectors
    truth = []
    for q, v in zip(queries, qvecs, strict=True):
        t = time.perf_counter()
        idx.search(q, k=5)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        truth.append([pid for pid, _ in idx.dense_ranking(v, 10)])
        dense.append(time.perf_counter() - t)
        t = time.perf_counter()
        idx.keyword_ranking(q, 50)
        keyword.append(time.perf_counter() - t)
    size = path.stat().st_size
    res = {
        "passages": len(ids), "file_bytes": size, "file_bytes_per_passage": size / len(ids),
        "ram_vector_bytes_per_passage": (matrix.nbytes + ids.nbytes) / len(ids),
        "vector_load_s": load_s,
        "hybrid_p50_ms": pct(whole, 50), "hybrid_p99_ms": pct(whole, 99),
        "dense_numpy_p50_ms": pct(dense, 50), "dense_numpy_p99_ms": pct(dense, 99),
        "keyword_fts5_p50_ms": pct(keyword, 50), "keyword_fts5_p99_ms": pct(keyword, 99),
    }
    res["sqlite_vec"] = sqlite_vec_backends(path, matrix.shape[1], qvecs, 10, truth)
    idx.close()
    res.update(process_memory(path, queries[:50]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmchain-bench-retrieval"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--fresh", action="store_true", help="rebuild the indexes (measures build speed)")
    ap.add_argument("--device", default="cpu", help="where the index build embeds (queries: always cpu)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/retrieval.json"))
    ap.add_argument("--memory", action="store_true", help="only the process memory of the last run's grown indexes")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.memory:
        results = json.loads(args.json.read_text(encoding="utf-8"))
        queries = [p.query for p in builtin_set("csl", DATA, args.work / "csl" / "docs")][:50]
        for n, r in results["scale"].items():
            r.update(process_memory(args.work / f"grown-{n}.sqlite", queries))
            print(f"{int(n):,} passages: {json.dumps(r)}")
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        return
    import torch

    results: dict = {"machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                                 "sqlite": sqlite3.sqlite_version, "build_device": args.device,
                                 "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
                     "sets": {}, "scale": {}}
    grids = {}
    for name in ("csl", "self-instruct"):
        build, report, grids[name] = quality(name, args.work, args.fresh, args.device)
        results["sets"][name] = {"build": build, "report": report, "dev_grid_recall@5": grids[name]}
        print(f"\n## {name} TEST half: {report['n']} queries, {report['sources']} docs, "
              f"{report['passages']} passages")
        print(report["markdown"])
        hv = report["hybrid_vs_best_single"]
        print(f"hybrid recall@5 {hv['hybrid']:.3f} vs max(BM25, dense) {hv['max_bm25_dense']:.3f}")
        if build["docs_per_s"]:
            print(f"build: {build['docs']} docs, {build['passages']} passages in {build['seconds']:.1f} s = "
                  f"{build['docs_per_s']:.1f} docs/s, {build['passages_per_s']:.1f} passages/s "
                  f"(embedding alone {build['embed_passages_per_s']:.1f} passages/s)")
    mean = {w: float(np.mean([g[w] for g in grids.values()])) for w in map(str, GRID)}
    best = max(GRID, key=lambda w: (mean[str(w)], -w))
    results["dev_choice"] = {"grid_mean_recall@5": mean, "best": best, "DENSE_WEIGHT": DENSE_WEIGHT}
    print(f"\nDEV grid (mean recall@5 over the sets): {json.dumps(mean)}; best {best}, DENSE_WEIGHT {DENSE_WEIGHT}")
    if best != DENSE_WEIGHT:
        print(f"WARNING: DEV chose {best}, index.DENSE_WEIGHT is {DENSE_WEIGHT}")
    last = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    if not args.sizes:  # latency not rerun: keep the last measured
        results["scale"] = last.get("scale", {})
    for name, r in results["sets"].items():  # index reused (no --fresh): keep the last build speed
        if not r["build"]["embedded"] and name in last.get("sets", {}):
            r["build"] = {**last["sets"][name]["build"], "kept_from_last_run": True}
    queries = [p.query for p in builtin_set("csl", DATA, args.work / "csl" / "docs")][: args.queries]
    for n in args.sizes:
        r = latency(args.work / "csl" / "index.sqlite", args.work, n, queries)
        results["scale"][str(n)] = r
        print(f"\n## {n:,} passages (csl repeated)")
        print(json.dumps(r, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
