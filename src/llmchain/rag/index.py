"""The retrieval index: one SQLite file with the sources, their passages, an FTS5 keyword index and
the passages' vectors; hybrid search over it.

    idx = Index.open("docs.sqlite")
    res = idx.search("how do I reset my password", k=5)            # mode: hybrid | dense | keyword
    for h in res.hits:
        assert idx.source_text(h.source)[h.start:h.end] == h.text   # what a citation relies on

Tables: `meta` (the manifest: encoder, versions, config, counts), `files` (path, sha256, mtime: what
an incremental rebuild compares), `sources` (one per document: a plain file is one, a JSONL/CSV file
one per record; its full text), `passages` (character spans into their source's text, and the
float32 vector as a blob), `passages_fts` (FTS5, porter + unicode61 over jieba-segmented text).

Dense search is exact: the vectors are read once into a numpy matrix and scored with one matrix
product (sqlite-vec would do the same scan in C, but this Python's sqlite3 cannot load extensions).
Keyword search is FTS5's BM25 over the query's words OR'ed. Hybrid is a convex combination of the
two rankings' min-max-normalised scores over their top candidates, the dense weight scaled by how much
of the query the encoder's vocabulary covers (see `fuse`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmchain.errors import UserError
from llmchain.rag.passages import query_terms

FORMAT = 1
KIND = "rag-index"
MODES = ("hybrid", "dense", "keyword")
RRF_K = 60
# Hybrid's dense weight for a query the encoder fully covers; keyword gets 1 - it. Chosen on the DEV
# halves of both built-in sets (benchmarks/retrieval.py: 0.6 and 0.65 tied on mean recall@5, the lower
# kept) and reported on their TEST halves. It is scaled by the query's coverage (Encoder.coverage).
DENSE_WEIGHT = 0.6

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, mtime REAL NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    mtime REAL NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sources_path ON sources(path);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source_id INTEGER NOT NULL REFERENCES sources(id),
    start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL, n_tokens INTEGER NOT NULL,
    truncated INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS passages_source ON passages(source_id);
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(terms, tokenize='porter unicode61 remove_diacritics 2');
"""


@dataclass
class Hit:
    passage_id: int
    source: str
    start: int
    end: int
    text: str
    score: float


@dataclass
class SearchResult:
    hits: list[Hit]
    query_truncated: bool
    mode: str


def read_manifest(conn: sqlite3.Connection, path) -> dict:
    """The index's manifest, or UserError naming `path` when the file is not an llmchain index."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        manifest = json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise UserError(f"{path}: not an llmchain index (build one with `llmchain index DOCS --out {path}`)")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: index format {manifest.get('format')} is not {FORMAT}; rebuild it with `llmchain index`")
    return manifest


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: the query's words, each quoted, OR'ed (None when it has no words)."""
    words = query_terms(query)
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words) if words else None


class Index:
    """A built index, open for search (read-only; thread-safe: one lock around the connection)."""

    encoder_name: str

    def __init__(self, path: Path, conn: sqlite3.Connection, manifest: dict):
        self.path, self.conn, self.manifest = path, conn, manifest
        self.encoder_name = manifest["encoder"]["name"]
        self._lock = threading.Lock()
        self._matrix: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._encoder = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        """Open the index at `path`. UserError naming the path when it is missing or not an index."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such index file" if not p.exists() else f"{p}: is a directory, not an index file")
        try:
            uri = f"file:{urllib.parse.quote(str(p.resolve()))}?mode=ro"  # read-only: search never writes
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            raise UserError(f"{p}: cannot open the index ({e})") from None
        return cls(p, conn, read_manifest(conn, p))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def encoder(self):
        if self._encoder is None:
            from llmchain.rag.embed import Encoder

            self._encoder = Encoder.load(self.manifest["encoder"]["load"])
            if self._encoder.dim != self.manifest["encoder"]["dim"]:
                raise UserError(f"{self.path}: built with a {self.manifest['encoder']['dim']}-d encoder, "
                                f"{self.encoder_name} gives {self._encoder.dim}-d vectors")
        return self._encoder

    def __len__(self) -> int:
        with self._lock:
            return self.conn.execute("SELECT count(*) FROM passages").fetchone()[0]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(passage ids [n], unit vectors [n, dim]) — read from the file once, then kept in memory."""
        if self._matrix is None:
            dim = int(self.manifest["encoder"]["dim"])
            with self._lock:
                rows = self.conn.execute("SELECT id, vector FROM passages ORDER BY id").fetchall()
            self._ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
        return self._ids, self._matrix

    def source_text(self, source: str) -> str:
        """The full text of `source` (a Hit's `source`): what the hits' offsets index into."""
        with self._lock:
            row = self.conn.execute("SELECT text FROM sources WHERE name = ?", (source,)).fetchone()
        if row is None:
            raise UserError(f"{self.path}: no source named {source!r} in this index")
        return row[0]

    def passage(self, passage_id: int) -> Hit | None:
        """The passage with this id (a Hit's `passage_id`) as a Hit with score 0.0, or None when the index
        holds no such passage."""
        found = self._hits([(passage_id, 0.0)])
        return found[0] if found else None

    def sources(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT name FROM sources ORDER BY id")]

    # --- search ------------------------------------------------------------------------------------

    def dense_ranking(self, query_vector: np.ndarray, depth: int) -> list[tuple[int, float]]:
        """(passage id, cosine) of the `depth` nearest passages, best first."""
        ids, matrix = self.vectors()
        if not len(ids):
            return []
        scores = matrix @ query_vector.astype(np.float32)
        depth = min(depth, len(ids))
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def keyword_ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        """(passage id, BM25 score, higher is better) of the `depth` best keyword matches."""
        expr = fts_query(query)
        if expr is None:
            return []
        with self._lock:
            rows = self.conn.execute(
                "SELECT rowid, rank FROM passages_fts WHERE passages_fts MATCH ? ORDER BY rank LIMIT ?",
                (expr, depth)).fetchall()
        return [(int(r), -float(s)) for r, s in rows]  # FTS5's rank is -BM25 (lower is better)

    def search(self, query: str, *, k: int = 5, mode: str = "hybrid", depth: int | None = None,
               query_vector: np.ndarray | None = None) -> SearchResult:
        """The `k` best passages for `query`. mode: hybrid (dense and keyword fused, see `fuse`), dense or
        keyword.
        A query longer than the encoder's limit is cut (`query_truncated`); UserError on a bad mode/k.
        `depth`: candidates taken from each ranking before fusing (at least 50); `query_vector`: the
        query's embedding when the caller already has it (batched evaluation), else it is encoded here."""
        if mode not in MODES:
            raise UserError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        depth = max(depth or 0, k, 50)
        truncated = False
        dense: list[tuple[int, float]] = []
        keyword: list[tuple[int, float]] = []
        if mode in ("hybrid", "dense"):
            if query_vector is None:
                emb = self.encoder.encode([query])
                truncated, query_vector = emb.truncated[0], emb.vectors[0]
            dense = self.dense_ranking(query_vector, depth)
        if mode in ("hybrid", "keyword"):
            keyword = self.keyword_ranking(query, depth)
        if mode == "dense":
            ranked = dense[:k]
        elif mode == "keyword":
            ranked = keyword[:k]
        else:
            coverage = self.encoder.coverage([query])[0]
            ranked = fuse(dense, keyword, k, DENSE_WEIGHT * coverage)
        return SearchResult(self._hits(ranked), truncated, mode)

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        ids = [pid for pid, _ in ranked]
        with self._lock:
            rows = self.conn.execute(
                f'SELECT p.id, s.name, p.start, p."end", p.text FROM passages p JOIN sources s ON s.id = p.source_id '
                f'WHERE p.id IN ({",".join("?" * len(ids))})', ids).fetchall()
        by_id = {r[0]: r for r in rows}
        return [Hit(pid, by_id[pid][1], by_id[pid][2], by_id[pid][3], by_id[pid][4], score)
                for pid, score in ranked if pid in by_id]


def rrf(rankings: list[list[tuple[int, float]]], k: int, c: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = Σ 1 / (c + rank of d in each ranking), rank from 1. Hybrid's
    former method, kept as the benchmark's comparison (it let the weak ranking drag the fusion down)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (pid, _) in enumerate(ranking, 1):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (c + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def _minmax(ranking: list[tuple[int, float]]) -> dict[int, float]:
    if not ranking:
        return {}
    scores = np.array([x for _, x in ranking], np.float64)
    lo, hi = scores.min(), scores.max()
    scaled = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return {pid: float(x) for (pid, _), x in zip(ranking, scaled, strict=True)}


def fuse(dense: list[tuple[int, float]], keyword: list[tuple[int, float]], k: int,
         dense_weight: float) -> list[tuple[int, float]]:
    """Hybrid ranking: score = w·cosine' + (1 − w)·BM25', each min-max-scaled to [0, 1] over its own
    candidates (a passage missing from a ranking scores 0 there). Scores, not ranks (RRF): a ranking
    that is weak for this query spreads its scores thinly and cannot outvote a strong one the way its
    ranks would; `dense_weight` (DENSE_WEIGHT × the query's encoder coverage) silences the dense half
    for a language the encoder never learnt."""
    w = min(max(dense_weight, 0.0), 1.0)
    d, kw = _minmax(dense), _minmax(keyword)
    scores = {pid: w * d.get(pid, 0.0) + (1 - w) * kw.get(pid, 0.0) for pid in d.keys() | kw.keys()}
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
