"""`llmchain index`: files → documents → passages → vectors + FTS5, into one SQLite file, incrementally.

    summary = build_index(["docs/"], "docs.sqlite", IndexConfig())

Anything `data prepare` reads is read here by the same readers (txt, md, JSONL, CSV/TSV, parquet,
HTML, WARC; a prepared documents dir reads its `documents/part-*.jsonl.gz`). A plain file is one
source; a JSONL/CSV/parquet/WARC file is one source per record (`file.jsonl:3`). A rebuild compares each
file's sha256 with the index's: only added or changed files are read and embedded, removed ones leave
the index, and the summary counts added / changed / removed / unchanged files. Empty, binary and
unreadable files are reported (`Skipped`, one line each) and skipped.

Safety: a new index is built in a temp file beside OUT and renamed into place; an existing one is
changed in one SQLite transaction (its rollback journal undoes a crash half way), after all the
embedding is done. Either way a reader sees the old index or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmchain.artifacts import sha256_file, versions
from llmchain.config import IndexConfig
from llmchain.data.readers import ReaderOptions, Rejection, document_files, read_shard
from llmchain.data.sources import Shard, detect_format, discover
from llmchain.errors import UserError
from llmchain.rag.index import FORMAT, KIND, SCHEMA, read_manifest
from llmchain.rag.passages import keyword_terms, split_passages

_SINGLE_DOC_FORMATS = ("text", "html")
_BINARY_SNIFF = 8192


@dataclass
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class BuildSummary:
    out: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    sources: int = 0
    passages: int = 0
    embedded: int = 0  # passages embedded in this run
    truncated: int = 0  # of those, passages the encoder had to cut
    rebuilt: bool = False  # the encoder or passage settings changed: everything was re-embedded
    seconds: float = 0.0
    embed_seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # records of a read file that could not be read

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = [s.__dict__ for s in self.skipped]
        return d


@dataclass
class _File:
    name: str  # the path as the index records it (relative to the DOCS folder)
    path: Path
    fmt: str
    compression: str | None
    id_field: str | None = None


@dataclass
class _Source:
    name: str
    file: _File
    sha256: str
    mtime: float
    text: str
    spans: list[tuple[int, int]]


def collect_files(inputs: list[str]) -> tuple[list[_File], list[Skipped]]:
    """The files to index and the ones skipped for their type. A prepared documents dir (from `data
    prepare`) contributes its documents files only; other folders recurse."""
    files: list[_File] = []
    skipped: list[Skipped] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and ((p / "documents").is_dir() and any((p / "documents").glob("part-*.jsonl*"))):
            for f in document_files(p):
                fmt, comp = detect_format(f)
                files.append(_File(str(f.relative_to(p)), f, fmt or "jsonl", comp, id_field="id"))
            continue
        known, unknown = discover([item])
        for f in known:
            fmt, comp = detect_format(f)
            files.append(_File(_name(f, p, len(inputs)), f, fmt, comp))
        skipped.extend(Skipped(str(f), "unknown file type (not txt, md, jsonl, csv, tsv, parquet, html, warc)")
                       for f in unknown)
    seen: dict[str, Path] = {}
    for f in files:
        if f.name in seen and seen[f.name] != f.path:
            raise UserError(f"{f.path} and {seen[f.name]} would share the name {f.name!r} in the index; "
                            "index one folder at a time")
        seen[f.name] = f.path
    return files, skipped


def _name(f: Path, root: Path, n_inputs: int) -> str:
    if root.is_dir():
        rel = f.relative_to(root).as_posix()
        return rel if n_inputs == 1 else f"{root.name}/{rel}"
    return f.name if n_inputs == 1 else f.as_posix()


def _sniff(f: _File) -> str | None:
    """Why a file cannot be indexed (empty, binary, unreadable), or None."""
    try:
        size = f.path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with open(f.path, "rb") as fh:
            head = fh.read(_BINARY_SNIFF)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if f.compression is None and f.fmt not in ("parquet", "warc") and b"\x00" in head:
        return "binary file (NUL bytes), not text"
    return None


def read_sources(f: _File, sha256: str, mtime: float, cfg: IndexConfig,
                 warnings: list[str]) -> tuple[list[_Source], str | None]:
    """The documents of one file as sources with their passage spans, and why there are none (or None)."""
    r = cfg.reader
    opts = ReaderOptions(text_field=r.text_field, id_field=f.id_field or r.id_field, columns=list(r.columns),
                         csv_header=r.csv_header, text_unit="file", warc_html_only=r.warc_html_only)
    src = str(f.path)
    sources: list[_Source] = []
    first_rejection: str | None = None
    for item in read_shard(Shard(0, src, f.fmt, f.compression), opts):
        if isinstance(item, Rejection):
            first_rejection = first_rejection or item.reason
            if item.line:
                warnings.append(f"{f.path}:{item.line}: {item.reason}")
            continue
        if "\x00" in item.text:
            first_rejection = first_rejection or "binary file (NUL characters), not text"
            continue
        spans = split_passages(item.text, cfg.passage_tokens)
        if not spans:
            continue
        if f.fmt in _SINGLE_DOC_FORMATS:
            name = f.name
        elif f.id_field:
            name = item.id
        else:
            name = f.name + (item.id[len(src):] if item.id.startswith(src) else f"#{item.id}")
        sources.append(_Source(name, f, sha256, mtime, item.text, spans))
    if not sources:
        return [], first_rejection or "no text"
    return sources, None


def _settings(cfg: IndexConfig, encoder) -> dict:
    """What the stored passages and vectors depend on: a change means re-embedding everything."""
    return {"encoder": encoder.name, "dim": encoder.dim, "max_tokens": encoder.max_tokens,
            "passage_tokens": cfg.passage_tokens, "reader": cfg.reader.model_dump(mode="json")}


def build_index(inputs: list[str], out: str | os.PathLike, cfg: IndexConfig, *, progress: bool = True,
                log=None) -> BuildSummary:
    """Build or update the index at `out` from `inputs` (files, folders, globs); see the module doc."""
    from llmchain.rag.embed import Encoder

    t0 = time.perf_counter()
    out = Path(out)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    summary = BuildSummary(out=str(out))
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out names the index file (e.g. {out}/index.sqlite)")
    old: dict[str, str] = {}
    old_manifest = None
    if out.exists():
        conn = sqlite3.connect(str(out))
        try:
            old_manifest = read_manifest(conn, out)
            old = dict(conn.execute("SELECT path, sha256 FROM files"))
        finally:
            conn.close()
    files, summary.skipped = collect_files(inputs)
    # the index (and its journal / temp files) may sit inside the folder it indexes
    mine = {out.resolve(), out.with_name(out.name + "-journal").resolve()}
    summary.skipped = [s for s in summary.skipped
                       if Path(s.path).resolve() not in mine and not Path(s.path).name.startswith(f".{out.name}.tmp-")]
    if not files and not old:
        raise UserError(f"{', '.join(inputs)}: no files to index (txt, md, jsonl, csv, tsv, parquet, html, warc)")
    encoder = Encoder.load(cfg.encoder, device=cfg.device)
    settings = _settings(cfg, encoder)
    if old_manifest is not None and old_manifest.get("settings") != settings:
        summary.rebuilt = True
        say(f"{out}: built with other settings ({_diff(old_manifest.get('settings') or {}, settings)}); "
            "re-embedding everything")
        old = {}

    todo: list[_Source] = []
    kept: set[str] = set()
    touched: dict[str, tuple[str, float, int]] = {}  # name → (sha256, mtime, size) of added/changed files
    mtimes: dict[str, float] = {}
    for f in files:
        why = _sniff(f)
        sha = None
        if why is None:
            try:
                sha = sha256_file(f.path)
                st = f.path.stat()
            except OSError as e:
                why = f"unreadable ({e.strerror or e})"
        if why is not None:
            summary.skipped.append(Skipped(str(f.path), why))
            continue
        if old.get(f.name) == sha:
            summary.unchanged += 1
            kept.add(f.name)
            mtimes[f.name] = st.st_mtime
            continue
        sources, why = read_sources(f, sha, st.st_mtime, cfg, summary.warnings)
        if why is not None:
            summary.skipped.append(Skipped(str(f.path), why))
            continue
        if f.name in old:
            summary.changed += 1
        else:
            summary.added += 1
        touched[f.name] = (sha, st.st_mtime, st.st_size)
        todo.extend(sources)
    summary.removed = len(set(old) - kept - set(touched))

    texts = [s.text[a:b] for s in todo for a, b in s.spans]
    t_embed = time.perf_counter()
    bar = None
    if progress and texts:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), unit="passage", desc="embedding", file=sys.stderr, disable=None)
    try:
        emb = encoder.encode(texts, batch_size=cfg.batch_size, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    summary.embed_seconds = time.perf_counter() - t_embed
    summary.embedded = len(texts)
    summary.truncated = sum(emb.truncated)

    manifest = {
        "kind": KIND, "format": FORMAT,
        "encoder": {"name": encoder.name, "load": cfg.encoder if encoder.name != "minilm" else "minilm",
                    "dim": encoder.dim, "max_tokens": encoder.max_tokens},
        "settings": settings,
        "config": cfg.model_dump(mode="json"),
        "vectors": "float32 blobs, exact search with numpy",
        "keyword": "FTS5 porter unicode61 over jieba search-mode words (CJK)",
        "versions": versions(),
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    keep_created = old_manifest is not None and not summary.rebuilt
    manifest["created"] = old_manifest.get("created") if keep_created else manifest["updated"]
    if old_manifest is None or summary.rebuilt:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(str(tmp))
            _write(conn, manifest, todo, emb, touched, set(), {}, summary)
            conn.close()
            _fsync(tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        conn = sqlite3.connect(str(out))
        try:
            gone = (set(old) - kept) | set(touched)
            _write(conn, manifest, todo, emb, touched, gone, mtimes, summary)
        finally:
            conn.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _write(conn: sqlite3.Connection, manifest: dict, todo: list[_Source], emb, touched: dict,
           gone: set[str], mtimes: dict[str, float], summary: BuildSummary) -> None:
    """All changes in one transaction: remove `gone` files' rows, insert the new sources and passages."""
    conn.isolation_level = None  # explicit BEGIN / COMMIT
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for path in gone:
            ids = [r[0] for r in conn.execute("SELECT id FROM sources WHERE path = ?", (path,))]
            for sid in ids:
                conn.execute("DELETE FROM passages_fts WHERE rowid IN (SELECT id FROM passages WHERE source_id = ?)",
                             (sid,))
                conn.execute("DELETE FROM passages WHERE source_id = ?", (sid,))
            conn.execute("DELETE FROM sources WHERE path = ?", (path,))
            conn.execute("DELETE FROM files WHERE path = ?", (path,))
        for name, (sha, mtime, size) in touched.items():
            conn.execute("INSERT INTO files (path, sha256, mtime, size) VALUES (?, ?, ?, ?)", (name, sha, mtime, size))
        for name, mtime in mtimes.items():
            conn.execute("UPDATE files SET mtime = ? WHERE path = ?", (mtime, name))
            conn.execute("UPDATE sources SET mtime = ? WHERE path = ?", (mtime, name))
        row = 0
        for s in todo:
            cur = conn.execute("INSERT INTO sources (name, path, sha256, mtime, text) VALUES (?, ?, ?, ?, ?)",
                               (s.name, s.file.name, s.sha256, s.mtime, s.text))
            sid = cur.lastrowid
            for a, b in s.spans:
                text = s.text[a:b]
                cur = conn.execute(
                    'INSERT INTO passages (source_id, start, "end", text, n_tokens, truncated, vector) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sid, a, b, text, emb.n_tokens[row], int(emb.truncated[row]), emb.vectors[row].astype("<f4").tobytes()))
                conn.execute("INSERT INTO passages_fts (rowid, terms) VALUES (?, ?)", (cur.lastrowid, keyword_terms(text)))
                row += 1
        summary.sources = conn.execute("SELECT count(*) FROM sources").fetchone()[0]
        summary.passages = conn.execute("SELECT count(*) FROM passages").fetchone()[0]
        files = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        manifest["counts"] = {"files": files, "sources": summary.sources, "passages": summary.passages}
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('manifest', ?)",
                     (json.dumps(manifest, ensure_ascii=False),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys) or "unknown"
