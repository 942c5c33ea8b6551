"""Benchmark: retrieval quality, index build speed, query latency at scale, memory, numpy vs sqlite-vec.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/retrieval.py [--work DIR] [--queries 200]

1. Quality, on the two built-in sets of `llmchain eval retrieval` (csl: 1,000 Chinese titles → their
   abstracts among 2,000; self-instruct: 427 English instructions → their task's input + output):
   recall@5 / MRR@10 / nDCG@10 of hybrid, dense, keyword (FTS5) and the rank-bm25 baseline, and hybrid
   recall@5 beside max(BM25, dense).
2. Build speed: documents/s and passages/s of `build_index` (from scratch, MiniLM on CPU) per set.
3. Latency at 10k and 100k passages: the csl index grown by repeating its passages (vectors and FTS
   rows copied under new ids), p50/p99 over `--queries` csl titles of a whole hybrid search (encode the
   query, scan, FTS5, fuse, fetch), of the dense scan alone and of the FTS5 query alone.
4. Memory per passage: index file bytes / passages, and the in-memory vector matrix's bytes / passage.
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
from llmchain.rag.evaluate import build_report, builtin_set, evaluate
from llmchain.rag.index import Index

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
    with Index.open(d / "index.sqlite") as idx:
        report = build_report(name, idx, pairs, [1, 5, 10], evaluate(idx, pairs, [1, 5, 10]), {})
    return build, report


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
        "ram_vector_bytes_per_passage": (matrix.nbytes + ids.nbytes) / len(ids), "vector_load_s": load_s,
        "hybrid_p50_ms": pct(whole, 50), "hybrid_p99_ms": pct(whole, 99),
        "dense_numpy_p50_ms": pct(dense, 50), "dense_numpy_p99_ms": pct(dense, 99),
        "keyword_fts5_p50_ms": pct(keyword, 50), "keyword_fts5_p99_ms": pct(keyword, 99),
    }
    res["sqlite_vec"] = sqlite_vec_backends(path, matrix.shape[1], qvecs, 10, truth)
    idx.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmchain-bench-retrieval"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--fresh", action="store_true", help="rebuild the indexes (measures build speed)")
    ap.add_argument("--device", default="cpu", help="where the index build embeds (queries: always cpu)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/retrieval.json"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    results: dict = {"machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                                 "sqlite": sqlite3.sqlite_version, "build_device": args.device,
                                 "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
                     "sets": {}, "scale": {}}
    for name in ("csl", "self-instruct"):
        build, report = quality(name, args.work, args.fresh, args.device)
        results["sets"][name] = {"build": build, "report": report}
        print(f"\n## {name}: {report['n']} queries, {report['sources']} docs, {report['passages']} passages")
        print(report["markdown"])
        hv = report["hybrid_vs_best_single"]
        print(f"hybrid recall@5 {hv['hybrid']:.3f} vs max(BM25, dense) {hv['max_bm25_dense']:.3f}")
        if build["docs_per_s"]:
            print(f"build: {build['docs']} docs, {build['passages']} passages in {build['seconds']:.1f} s = "
                  f"{build['docs_per_s']:.1f} docs/s, {build['passages_per_s']:.1f} passages/s "
                  f"(embedding alone {build['embed_passages_per_s']:.1f} passages/s)")
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
