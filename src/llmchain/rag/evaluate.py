"""`llmchain eval retrieval`: recall@k, MRR and nDCG@k of hybrid, dense-only and keyword-only search,
beside a classical BM25 baseline (rank-bm25 over the same passages), on (query, relevant sources) pairs.

Relevance is per source (a document): a hit counts when its passage belongs to a relevant source; the
ranking of sources is the ranking of passages with later passages of an already-ranked source dropped.
Built-in sets (derived from /work/shared/data, see docs/retrieval.md):

- `csl`: Chinese. CSL's 1,000 test + 1,000 dev abstracts are indexed; the 1,000 test titles are the
  queries, each with its own abstract as the one relevant document.
- `self-instruct`: English. The 427 human-written Self-Instruct tasks (175 seed + 252 user-oriented);
  a document is a task's input and output, its query the task's instruction.

Or your own: an index plus a JSONL/CSV/TSV of `query` and `relevant` (a source name, or a JSON list of
names, as `llmchain search` prints them).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.errors import UserError
from llmchain.rag.index import Index
from llmchain.rag.passages import _CJK, _jieba

SETS = ("csl", "self-instruct")
SYSTEMS = ("hybrid", "dense", "keyword", "bm25")
TITLES = {"hybrid": "hybrid (RRF)", "dense": "dense", "keyword": "keyword (FTS5)", "bm25": "BM25 (rank-bm25)"}


@dataclass
class Pair:
    query: str
    relevant: set[str]


# --- metrics -------------------------------------------------------------------------------------------


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: list[str], relevant: set[str]) -> float:
    return next((1.0 / r for r, s in enumerate(ranked, 1) if s in relevant), 0.0)


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(r + 1) for r, s in enumerate(ranked[:k], 1) if s in relevant)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def score_rankings(rankings: list[list[str]], pairs: list[Pair], ks: list[int]) -> dict[str, float]:
    """Mean recall@k, nDCG@k (each k) and MRR@max(k) over the pairs."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at(r, p.relevant, k) for r, p in zip(rankings, pairs, strict=True)]))
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at(r, p.relevant, k) for r, p in zip(rankings, pairs, strict=True)]))
    out[f"mrr@{max(ks)}"] = float(np.mean([reciprocal_rank(r, p.relevant) for r, p in zip(rankings, pairs, strict=True)]))
    return out


def sources_of(passage_sources: list[str], depth: int) -> list[str]:
    """Distinct sources in rank order (a source ranks where its best passage does), at most `depth`."""
    return list(dict.fromkeys(passage_sources))[:depth]


# --- the BM25 baseline ---------------------------------------------------------------------------------


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased words; CJK runs as jieba words (the baseline's tokenizer, no stemming)."""
    if _CJK.search(text):
        text = " ".join(_jieba().cut(text))
    return re.findall(r"[^\W_]+", text.lower())


class BM25Baseline:
    """rank-bm25's BM25Okapi over every passage of an index."""

    def __init__(self, index: Index):
        from rank_bm25 import BM25Okapi

        with index._lock:
            rows = index.conn.execute(
                "SELECT s.name, p.text FROM passages p JOIN sources s ON s.id = p.source_id ORDER BY p.id").fetchall()
        self.sources = [r[0] for r in rows]
        self.bm25 = BM25Okapi([bm25_tokens(r[1]) or [""] for r in rows])

    def rank(self, query: str, depth: int) -> list[str]:
        scores = self.bm25.get_scores(bm25_tokens(query))
        top = np.argsort(-scores, kind="stable")[: depth * 4]
        return sources_of([self.sources[i] for i in top if scores[i] > 0], depth)


# --- sets --------------------------------------------------------------------------------------------


def builtin_set(name: str, data_dir: Path, docs_dir: Path, limit: int | None = None) -> list[Pair]:
    """Write set `name`'s documents to DOCS_DIR/docs.jsonl (one source per line: `docs.jsonl:N`) and
    return its query pairs."""
    docs: list[str] = []
    queries: list[tuple[str, int]] = []  # (query, index of its document)
    if name == "csl":
        base = data_dir / "csl_zh_title_summarization"
        for split in ("test", "dev"):
            path = base / f"{split}.tsv"
            if not path.is_file():
                raise UserError(f"{path}: missing (the csl set needs the shared data dir; see --data-dir)")
            with open(path, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    if split == "test":
                        queries.append((row["title"], len(docs)))
                    docs.append(row["abstract"])
    elif name == "self-instruct":
        base = data_dir / "self_instruct_human"
        for fname in ("seed_tasks_train.jsonl", "user_oriented_eval.jsonl"):
            path = base / fname
            if not path.is_file():
                raise UserError(f"{path}: missing (the self-instruct set needs the shared data dir; see --data-dir)")
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                obj = json.loads(line)
                out = obj.get("output") or (obj.get("instances") or [{}])[0].get("output", "")
                inp = obj.get("input") or (obj.get("instances") or [{}])[0].get("input", "")
                queries.append((obj["instruction"], len(docs)))
                docs.append(f"{inp}\n\n{out}".strip())
    else:
        raise UserError(f"unknown retrieval set {name!r}: use one of {', '.join(SETS)} or --index with --queries")
    docs_dir.mkdir(parents=True, exist_ok=True)
    from llmchain.artifacts import atomic_write_text

    atomic_write_text(docs_dir / "docs.jsonl", "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    pairs = [Pair(q, {f"docs.jsonl:{i + 1}"}) for q, i in queries if q.strip()]
    return pairs[:limit] if limit else pairs


def read_pairs(path: str | os.PathLike, limit: int | None = None) -> list[Pair]:
    """(query, relevant sources) records of a JSONL / CSV / TSV file with `query` and `relevant` fields."""
    from llmchain.data.tables import read_records

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such queries file")
    pairs = []
    records, lines = read_records(p, "queries")
    for number, rec in zip(lines, records, strict=True):
        if "query" not in rec or "relevant" not in rec:
            raise UserError(f"{p}:{number}: a record needs 'query' and 'relevant' fields, has {sorted(rec)}")
        rel = rec["relevant"]
        if isinstance(rel, str) and rel.startswith("["):
            try:
                rel = json.loads(rel)
            except ValueError:
                raise UserError(f"{p}:{number}: 'relevant' is not a JSON list of source names") from None
        rel = {str(r) for r in (rel if isinstance(rel, list) else [rel])}
        pairs.append(Pair(str(rec["query"]), rel))
    if not pairs:
        raise UserError(f"{p}: no query records")
    return pairs[:limit] if limit else pairs


# --- the eval -----------------------------------------------------------------------------------------


def evaluate(index: Index, pairs: list[Pair], ks: list[int], systems: tuple[str, ...] = SYSTEMS,
             progress=None) -> dict[str, Any]:
    """Metrics per system, mean milliseconds per query (search only: the queries' embedding, batched,
    is `encode_ms_per_query`), and how many queries the encoder truncated."""
    depth = max(ks)
    unknown = {s for p in pairs for s in p.relevant} - set(index.sources())
    if unknown:
        raise UserError(f"{index.path}: {len(unknown)} relevant source(s) are not in the index, "
                        f"e.g. {sorted(unknown)[0]!r}")
    results: dict[str, Any] = {}
    baseline = BM25Baseline(index) if "bm25" in systems else None
    index.keyword_ranking("warm-up 预热", 1)  # load jieba outside the timed loops
    vectors, truncated, encode_ms = None, 0, None
    if {"hybrid", "dense"} & set(systems):
        index.encoder.encode(["warm-up"])
        # every query embedded once, in batches, for both hybrid and dense: what search would compute
        t0 = time.perf_counter()
        emb = index.encoder.encode([p.query for p in pairs])
        encode_ms = 1000 * (time.perf_counter() - t0) / max(1, len(pairs))
        vectors, truncated = emb.vectors, sum(emb.truncated)
    for system in systems:
        rankings: list[list[str]] = []
        t0 = time.perf_counter()
        for i, p in enumerate(pairs):
            if system == "bm25":
                rankings.append(baseline.rank(p.query, depth))
            else:
                vector = vectors[i] if vectors is not None and system != "keyword" else None
                res = index.search(p.query, k=depth * 4, mode=system, query_vector=vector)
                rankings.append(sources_of([h.source for h in res.hits], depth))
            if progress:
                progress(1)
        seconds = time.perf_counter() - t0
        results[system] = {**score_rankings(rankings, pairs, ks), "ms_per_query": 1000 * seconds / max(1, len(pairs))}
    return {"systems": results, "queries_truncated": truncated, "encode_ms_per_query": encode_ms}


def markdown_table(report: dict[str, Any]) -> str:
    cols = report["columns"]
    lines = ["| system | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for s in report["systems"]:
        lines.append(f"| {s['title']} | " + " | ".join(f"{s[c]:.3f}" if c != "ms_per_query" else f"{s[c]:.1f}"
                                                          for c in cols) + " |")
    return "\n".join(lines)


def build_report(name: str, index: Index, pairs: list[Pair], ks: list[int], measured: dict[str, Any],
                 config: dict[str, Any]) -> dict[str, Any]:
    columns = [f"recall@{k}" for k in ks] + [f"mrr@{max(ks)}"] + [f"ndcg@{k}" for k in ks if k > 1] + ["ms_per_query"]
    systems = [{"name": s, "title": TITLES[s], "baseline": s == "bm25", **m} for s, m in measured["systems"].items()]
    k5 = "recall@5" if 5 in ks else f"recall@{ks[0]}"
    by = measured["systems"]
    best_single = max(by.get("bm25", {}).get(k5, 0.0), by.get("dense", {}).get(k5, 0.0))
    notes = []
    if "hybrid" in by:
        notes.append(f"hybrid {k5} {by['hybrid'][k5]:.3f} vs max(BM25, dense) {best_single:.3f}")
    if measured.get("encode_ms_per_query") is not None:
        notes.append(f"ms_per_query is the search alone; embedding the queries (batched) took "
                     f"{measured['encode_ms_per_query']:.1f} ms per query more for hybrid and dense")
    report = {
        "kind": "eval-retrieval", "task": f"retrieval: {name}", "set": name, "n": len(pairs),
        "passages": len(index), "sources": len(index.sources()), "encoder": index.encoder_name,
        "columns": columns, "systems": systems, "queries_truncated": measured["queries_truncated"],
        "encode_ms_per_query": measured["encode_ms_per_query"],
        "hybrid_vs_best_single": {"metric": k5, "hybrid": by.get("hybrid", {}).get(k5), "max_bm25_dense": best_single},
        "notes": notes, "config": config,
    }
    report["markdown"] = markdown_table(report)
    return report
