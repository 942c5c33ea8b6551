"""Benchmark: `llmchain data prepare` vs datatrove on the same step set, 1 and 2 workers.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/data_pipeline.py

Corpus: ≥ 100k documents built from ../shared/data (every line-based data set, English and
Chinese): windows of 1-12 consecutive lines of one source, several passes with different window
lengths, so documents overlap the way crawled pages do. Written as 4 JSONL files, so datatrove
(which parallelises per file) can use every worker too.

Step set, both sides: ftfy unicode repair → Gopher quality → Gopher repetition → C4 line rules
(min 1 sentence, no terminal-punctuation rule) → PII (datatrove: e-mail + IP; llmchain: also phones,
cards, IDs) → MinHash near-dedup with datatrove's default LSH (5-grams, 14 × 8) → JSONL output.
datatrove runs as its documented 5 stages (filter, signatures, buckets, cluster, filter+write).

Each run is a subprocess; peak memory is the largest summed RSS of its process tree (sampled
every 50 ms); CPU seconds are those of the run and all its workers (os.wait4), which stay
meaningful when the machine is shared. Prints one table: docs/s, MB/s, CPU, peak memory, kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCHAIN_SHARED_DATA", REPO.parent / "shared" / "data"))
N_FILES = 4


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------


def _sources() -> dict[str, list[str]]:
    def tsv(path: Path, col: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return [r[col] for r in csv.DictReader(f, delimiter="\t")]

    src: dict[str, list[str]] = {}
    with open(SHARED / "ag_news" / "test.csv", encoding="utf-8") as f:
        src["ag_news"] = [f"{r[1]}. {r[2]}" for r in csv.reader(f)]
    for name in ("sst2", "sst5"):
        src[name] = [s for split in ("train", "dev", "test") for s in tsv(SHARED / name / f"{split}.tsv", "sentence")]
    src["trec"] = [s for split in ("train", "test") for s in tsv(SHARED / "trec" / f"{split}.tsv", "text")]
    with open(SHARED / "waimai_10k_zh" / "waimai_10k.csv", encoding="utf-8") as f:
        src["waimai"] = [r["review"] for r in csv.DictReader(f)]
    src["csl"] = [s for split in ("dev", "test") for s in tsv(SHARED / "csl_zh_title_summarization" / f"{split}.tsv", "abstract")]
    src["multi30k"] = [x for p in sorted((SHARED / "multi30k").glob("*.??")) for x in p.read_text("utf-8").splitlines()]
    src["opinosis"] = [s for line in (SHARED / "opinosis" / "opinosis.jsonl").read_text("utf-8").splitlines()
                       for s in json.loads(line)["sentences"]]
    src["shakespeare"] = (SHARED / "tinyshakespeare" / "input.txt").read_text("utf-8").splitlines()
    src["zh_classical"] = [x for p in sorted((SHARED / "zh_classical").rglob("*.txt")) for x in p.read_text("utf-8").splitlines()]
    alpaca = json.loads((SHARED / "alpaca_1k" / "alpaca_data_1k.json").read_text("utf-8"))
    src["alpaca"] = [x for r in alpaca for x in r["output"].splitlines()]
    return {k: [x.strip() for x in v if x.strip()] for k, v in src.items()}


def build_corpus(folder: Path, min_docs: int) -> tuple[int, int]:
    """Write the corpus (if not cached) and return (documents, bytes)."""
    stamp = folder / "corpus.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info["min_docs"] == min_docs:
            return info["docs"], info["bytes"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = _sources()
    rng = random.Random(0)
    docs: list[dict] = []
    passes = 0
    while len(docs) < min_docs:
        for name, lines in sources.items():
            i = rng.randrange(12)  # each pass starts its windows at another offset
            while i < len(lines):
                w = rng.randint(1, 12)
                docs.append({"id": f"{name}-{passes}-{i}", "text": "\n".join(lines[i : i + w]), "source": name})
                i += w
        passes += 1
    rng.shuffle(docs)
    files = [open(folder / f"part-{k}.jsonl", "w", encoding="utf-8") for k in range(N_FILES)]
    for k, d in enumerate(docs):
        files[k % N_FILES].write(json.dumps(d, ensure_ascii=False) + "\n")
    for f in files:
        f.close()
    size = sum(p.stat().st_size for p in folder.glob("part-*.jsonl"))
    stamp.write_text(json.dumps({"min_docs": min_docs, "docs": len(docs), "bytes": size}))
    return len(docs), size


# ---------------------------------------------------------------------------------------------
# the two systems (each runs in its own subprocess)
# ---------------------------------------------------------------------------------------------


def run_llmchain(corpus: Path, out: Path, workers: int) -> int:
    from llmchain.config import DataConfig
    from llmchain.data.pipeline import Pipeline

    cfg = DataConfig(
        steps=["clean", "gopher_quality", "gopher_repetition", "c4", "pii", "near_dedup"],
        near_dedup={"bands": 14, "rows": 8},  # datatrove's default LSH, for the same work
        workers=workers,
    )
    stats = Pipeline.from_config(cfg).run([corpus], out, workers=workers, shard_mb=8, config=cfg)
    return stats["kept"]


def run_datatrove(corpus: Path, out: Path, workers: int) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    # 5-grams, 14 buckets × 8 hashes (the defaults); sha1 shingle hashes because datatrove's default
    # xxhash path passes str, which xxhash ≥ 3.5 no longer accepts
    cfg = MinhashConfig(hash_config=HashConfig(hash_fc="sha1", precision=64))
    logs = out / "logs"
    common = {"workers": workers, "skip_completed": os.environ.get("BENCH_RESUME") == "1"}
    filtered, sigs, buckets, remove = (out / n for n in ("filtered", "signatures", "buckets", "remove_ids"))
    stages = [
        LocalPipelineExecutor(pipeline=[
            JsonlReader(str(corpus), glob_pattern="part-*.jsonl"),
            FTFYFormatter(),
            GopherQualityFilter(),
            GopherRepetitionFilter(),
            C4QualityFilter(filter_no_terminal_punct=False, min_num_sentences=1),
            PIIFormatter(),
            JsonlWriter(str(filtered)),
        ], tasks=N_FILES, logging_dir=str(logs / "filter"), **common),
        LocalPipelineExecutor(pipeline=[JsonlReader(str(filtered)), MinhashDedupSignature(str(sigs), config=cfg)],
                              tasks=N_FILES, logging_dir=str(logs / "sigs"), **common),
        LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(sigs), str(buckets), config=cfg)],
                              tasks=cfg.num_buckets, logging_dir=str(logs / "buckets"), **common),
        LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(buckets), str(remove), config=cfg)],
                              tasks=1, logging_dir=str(logs / "cluster"), **common),
        LocalPipelineExecutor(pipeline=[JsonlReader(str(filtered)), MinhashDedupFilter(str(remove)),
                                        JsonlWriter(str(out / "documents"))],
                              tasks=N_FILES, logging_dir=str(logs / "final"), **common),
    ]
    for stage in stages:
        stage.run()
    import gzip

    return sum(1 for p in (out / "documents").glob("*.jsonl.gz") for _ in gzip.open(p, "rt", encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


def _tree_rss(pid: int, cpu: dict[int, float] | None = None) -> int:
    """Summed RSS (bytes) of `pid` and all its descendants, from /proc; records each one's CPU
    seconds so far in `cpu` (pool workers a run never waits for escape os.wait4's accounting)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            if cpu is not None:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def measure(system: str, corpus: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--_run", system, "--_corpus", str(corpus), "--_out", str(out), "--_workers", str(workers)]
    result = out.with_name(out.name + ".kept")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(result, "w"), stderr=subprocess.DEVNULL)
    peak = 0
    sampled: dict[int, float] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _tree_rss(proc.pid, sampled))
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{system} with {workers} workers failed (exit {proc.returncode}); run it alone to see why")
    kept = int(result.read_text().strip().splitlines()[-1])
    # CPU seconds of the run and its workers (the machine may be shared): os.wait4 counts the
    # processes that were waited for, the /proc samples also those that were not
    cpu = max(usage.ru_utime + usage.ru_stime, sum(sampled.values()))
    return {"system": system, "workers": workers, "seconds": seconds, "cpu": cpu, "peak": peak, "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000, help="minimum corpus size in documents")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--systems", nargs="+", default=["llmchain", "datatrove"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmchain-bench-data"))
    ap.add_argument("--_run"), ap.add_argument("--_corpus"), ap.add_argument("--_out"), ap.add_argument("--_workers", type=int)
    args = ap.parse_args()
    if args._run:
        fn = run_llmchain if args._run == "llmchain" else run_datatrove
        print(fn(Path(args._corpus), Path(args._out), args._workers))
        return
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared data sets at {SHARED}")
    corpus = args.work / "corpus"
    n_docs, n_bytes = build_corpus(corpus, args.docs)
    print(f"corpus: {n_docs:,} documents, {n_bytes / 1e6:.1f} MB in {N_FILES} JSONL files; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for workers in args.workers:
        for system in args.systems:
            r = measure(system, corpus, args.work / f"out-{system}-{workers}", workers)
            rows.append(r)
            print(f"  {system} ×{workers}: {r['seconds']:.1f}s", flush=True)
    print()
    print("| system | workers | wall s | docs/s | MB/s | CPU s | docs per CPU-s | peak memory | docs kept |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['workers']} | {r['seconds']:.1f} | {n_docs / r['seconds']:,.0f} | "
              f"{n_bytes / 1e6 / r['seconds']:.2f} | {r['cpu']:.1f} | {n_docs / r['cpu']:,.0f} | "
              f"{r['peak'] / 2**20:,.0f} MiB | {r['kept']:,} |")


if __name__ == "__main__":
    main()
