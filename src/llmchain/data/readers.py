"""Readers: txt/md, jsonl(.gz/.zst), csv/tsv, parquet, html(.gz), warc(.gz) → documents.

`read_shard(shard, options)` yields `Document`s and, for every record it cannot read, a
`Rejection` naming the file, line (or record number) and reason — a broken JSON line, invalid UTF-8,
a missing field or column, an empty or unreadable file. The executor counts them and writes them to
`rejected/`; under `--strict` the first one stops the run.

`iter_documents(path)` reads prepared documents back (the tokenizer/pack stage uses it).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llmchain.data.sources import Shard, detect_format
from llmchain.data.steps import Document
from llmchain.errors import UserError


@dataclass(slots=True)
class Rejection:
    """A record that could not be read: where it is, why, and (when readable) its raw text."""

    source: str
    line: int
    reason: str
    raw: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "step": "read", "reason": self.reason, "raw": self.raw}


@dataclass
class ReaderOptions:
    """How to find text in records (see DataConfig.reader for the user-facing docs)."""

    text_field: str = "text"
    id_field: str | None = "id"
    columns: list[str] = field(default_factory=lambda: ["text"])
    csv_header: bool = True
    text_unit: str = "file"  # file | paragraph | line
    warc_html_only: bool = True


def _open_binary(path: str, compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import zstandard

        # BufferedReader gives the zstd stream line iteration
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _raw(b: bytes, limit: int = 2000) -> str:
    return b[:limit].decode("utf-8", errors="replace")


def read_shard(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    """Documents and rejections of one shard, in file order. Never raises for a bad record or file."""
    reader = {
        "text": _read_text,
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "tsv": _read_csv,
        "parquet": _read_parquet,
        "html": _read_html,
        "warc": _read_warc,
    }[shard.fmt]
    produced = False
    try:
        for item in reader(shard, opts):
            produced = True
            yield item
    except (OSError, EOFError, ValueError, RuntimeError) as e:
        # unreadable file, corrupt compression, bad parquet footer ...: one rejection, the run goes on
        yield Rejection(shard.path, 0, f"unreadable_file: {type(e).__name__}: {e}")
        return
    if not produced and shard.start == 0:
        yield Rejection(shard.path, 0, "empty_file")


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without newline) for the shard's byte range."""
    with _open_binary(shard.path, shard.compression) as f:
        if shard.start:
            f.seek(shard.start)
        pos, end, number = shard.start, shard.end, shard.first_line
        for line in f:
            if 0 <= end <= pos:
                break
            pos += len(line)
            yield number, line.rstrip(b"\r\n")
            number += 1


def _read_text(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    src = shard.path
    if opts.text_unit == "file":
        with _open_binary(src, shard.compression) as f:
            data = f.read()
        if not data.strip():
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            yield Rejection(src, line, f"invalid_utf8 at byte {e.start}", _raw(data))
            return
        yield Document(f"{src}", text, src, {})
        return
    para: list[str] = []
    para_line = 0
    for number, raw in _lines(shard):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejection(src, number, f"invalid_utf8 at column {e.start + 1}", _raw(raw))
            continue
        if opts.text_unit == "line":
            if line.strip():
                yield Document(f"{src}:{number}", line, src, {"line": number})
            continue
        if line.strip():
            if not para:
                para_line = number
            para.append(line)
        elif para:
            yield Document(f"{src}:{para_line}", "\n".join(para), src, {"line": para_line})
            para = []
    if para:
        yield Document(f"{src}:{para_line}", "\n".join(para), src, {"line": para_line})


def _record_text(obj: dict, opts: ReaderOptions, src: str, number: int) -> Document | Rejection:
    if opts.text_field not in obj:
        return Rejection(src, number, f"missing_field: {opts.text_field!r}", json.dumps(obj, ensure_ascii=False)[:2000])
    text = obj[opts.text_field]
    if not isinstance(text, str):
        return Rejection(src, number, f"field {opts.text_field!r} is {type(text).__name__}, not text", str(text)[:2000])
    doc_id = f"{src}:{number}"
    if opts.id_field and obj.get(opts.id_field) is not None:
        value = obj[opts.id_field]
        # ints are ids in many dumps; a float, bool, list or "" would make an id that means nothing
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            why = (f"id_field {opts.id_field!r} is {value!r}, not a string or integer id (set "
                   "reader.id_field: null to number documents FILE:LINE)")
            return Rejection(src, number, why, str(obj)[:2000])
        doc_id = str(value)
    meta = {k: v for k, v in obj.items() if k not in (opts.text_field, opts.id_field) and _small(v)}
    meta["line"] = number
    return Document(doc_id, text, src, meta)


def _small(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200)


def _read_jsonl(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    src = shard.path
    loads = json.loads
    for number, raw in _lines(shard):
        if not raw.strip():
            continue
        try:
            obj = loads(raw)
        except UnicodeDecodeError:
            yield Rejection(src, number, "invalid_utf8", _raw(raw))
            continue
        except ValueError as e:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Rejection(src, number, "invalid_utf8", _raw(raw))
                continue
            yield Rejection(src, number, f"invalid_json: {e}", _raw(raw))
            continue
        if not isinstance(obj, dict):
            yield Rejection(src, number, f"not a JSON object ({type(obj).__name__})", _raw(raw))
            continue
        yield _record_text(obj, opts, src, number)


def _decoded_lines(f: IO[bytes], src: str, bad: list[Rejection]) -> Iterator[str]:
    """Text lines for the csv module; a line that is not UTF-8 is replaced by an empty row and rejected."""
    for number, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(Rejection(src, number, "invalid_utf8", _raw(raw)))
            yield "\n"


def _read_csv(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    src = shard.path
    delimiter = "\t" if shard.fmt == "tsv" else ","
    bad: list[Rejection] = []
    with _open_binary(src, shard.compression) as f:
        rows = csv.reader(_decoded_lines(f, src, bad), delimiter=delimiter)
        header: list[str] | None = None
        if opts.csv_header:
            header = next(rows, None)
            if header is None:
                return
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
        try:
            positions = [_column_index(c, header) for c in opts.columns]
        except KeyError as e:
            cols = ", ".join(header or [])
            yield Rejection(src, 1, f"missing_column: {e.args[0]!r} (columns: {cols}); set reader.columns")
            return
        line = rows.line_num
        for row in rows:
            number, line = line + 1, rows.line_num
            while bad:
                yield bad.pop(0)
            if not row or row == [""]:
                continue
            if max(positions) >= len(row):
                yield Rejection(src, number, f"row has {len(row)} columns, needs {max(positions) + 1}", delimiter.join(row))
                continue
            text = "\n".join(row[p] for p in positions)
            meta: dict[str, Any] = {"line": number}
            if header:
                meta.update({h: v for h, v in zip(header, row, strict=False) if v not in text and len(v) <= 200})
            yield Document(f"{src}:{number}", text, src, meta)
        while bad:
            yield bad.pop(0)


def _column_index(col: str, header: list[str] | None) -> int:
    if header is not None and col in header:
        return header.index(col)
    if str(col).isdigit():
        return int(col)
    raise KeyError(col)


def _read_parquet(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    import pyarrow.parquet as pq

    src = shard.path
    pf = pq.ParquetFile(src)
    names = pf.schema_arrow.names
    if opts.text_field not in names:
        yield Rejection(src, 0, f"missing_column: {opts.text_field!r} (columns: {', '.join(names)}); set reader.text_field")
        return
    number = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            number += 1
            yield _record_text(obj, opts, src, number)


def _read_html(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    from llmchain.data.clean import html_to_text

    src = shard.path
    with _open_binary(src, shard.compression) as f:
        data = f.read()
    if not data.strip():
        return
    text = html_to_text(data)
    if not text.strip():
        yield Rejection(src, 1, "no_main_text (html extraction found no article text)")
        return
    yield Document(src, text, src, {})


def _read_warc(shard: Shard, opts: ReaderOptions) -> Iterator[Document | Rejection]:
    from warcio.archiveiterator import ArchiveIterator

    from llmchain.data.clean import html_to_text

    src = shard.path
    number = 0
    with open(src, "rb") as f:
        for record in ArchiveIterator(f):
            number += 1
            if record.rec_type != "response" or record.http_headers is None:
                continue  # requests, revisits, metadata: not documents
            ctype = (record.http_headers.get_header("Content-Type") or "").lower()
            status = record.http_headers.get_statuscode()
            if opts.warc_html_only and "html" not in ctype:
                continue
            url = record.rec_headers.get_header("WARC-Target-URI")
            if status != "200":
                yield Rejection(src, number, f"http_status_{status}", url)
                continue
            body = record.content_stream().read()
            text = html_to_text(body, url=url)
            if not text.strip():
                yield Rejection(src, number, "no_main_text (html extraction found no article text)", url)
                continue
            meta = {"url": url, "date": record.rec_headers.get_header("WARC-Date"), "record": number}
            yield Document(f"{src}:{number}", text, src, meta)


# ---------------------------------------------------------------------------------------------
# Reading prepared documents back
# ---------------------------------------------------------------------------------------------


def document_files(path: str | os.PathLike) -> list[Path]:
    """The documents files of a prepared DIR (or DIR/documents), in order; a file is itself."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "documents").is_dir():
        p = p / "documents"
    if not p.is_dir():
        raise UserError(f"{path}: no such file or directory")
    files = sorted(p.glob("part-*.jsonl.gz")) or sorted(p.glob("*.jsonl")) + sorted(p.glob("*.jsonl.gz"))
    if not files:
        raise UserError(f"{path}: no documents found (expected documents/part-*.jsonl.gz from `llmchain data prepare`)")
    return files


def iter_documents(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Documents {"id","text","source","meta"} of a prepared DIR, a .jsonl/.jsonl.gz file, or a
    plain .txt/.md file (one document), in a deterministic order.

    A malformed line is a DataError naming the file and line.
    """
    from llmchain.errors import DataError

    for f in document_files(path):
        fmt, comp = detect_format(f)
        if fmt == "text":
            with _open_binary(str(f), comp) as fh:
                text = fh.read().decode("utf-8", errors="strict")
            yield {"id": str(f), "text": text, "source": str(f), "meta": {}}
            continue
        if fmt != "jsonl":
            raise UserError(f"{f}: expected .jsonl, .jsonl.gz or .txt")
        with _open_binary(str(f), comp) as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                    text = obj["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{f}:{number}: not a document record ({e}); expected JSON with a 'text' field") from None
                if not isinstance(text, str):
                    raise DataError(f"{f}:{number}: 'text' is not a string")
                obj.setdefault("id", f"{f}:{number}")
                obj.setdefault("source", str(f))
                obj.setdefault("meta", {})
                yield obj
