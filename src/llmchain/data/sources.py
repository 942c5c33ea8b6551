"""Finding input files and cutting them into shards.

Folders recurse, globs expand, every file gets a format from its name, and files whose type we do
not know are reported rather than guessed. Uncompressed line-based files (JSONL, and text read per
line or per paragraph) are cut into byte ranges that start at a line (or paragraph) boundary, so one
large file keeps every worker busy; other files are one shard each. The shard plan depends only on
the inputs and `shard_mb` — never on the number of workers — so the output is the same for any
number of workers.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from llmchain.errors import UserError

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".html": "html",
    ".htm": "html",
    ".warc": "warc",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_SCAN_CHUNK = 1 << 24


@dataclass(frozen=True)
class Shard:
    """A unit of work: a whole file, or the byte range [start, end) of an uncompressed one."""

    index: int
    path: str
    fmt: str
    compression: str | None
    start: int = 0
    end: int = -1  # -1: to the end of the file
    first_line: int = 1  # line number of the first line of the range

    def to_json(self) -> dict:
        return asdict(self)


def detect_format(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name; format None when unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = COMPRESSIONS[suffixes.pop()]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if (fmt == "warc" and compression == "zstd") or (fmt == "parquet" and compression):
        return None, compression  # warcio reads gzip only; parquet compresses inside the file
    return fmt, compression


def discover(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(known files, files of unknown type), each sorted and without duplicates.

    A path that does not exist (and matches no glob) is a UserError naming it.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p))))
        elif p.exists():
            files.append(p)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"{item}: no files match this pattern")
            for m in matches:
                files.extend(sorted(f for f in m.rglob("*") if f.is_file()) if m.is_dir() else [m])
        else:
            raise UserError(f"{item}: no such file or directory")
    seen: set[Path] = set()
    known, unknown = [], []
    for f in files:
        key = f.resolve()
        if key in seen:
            continue
        seen.add(key)
        (known if detect_format(f)[0] else unknown).append(f)
    return known, unknown


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def splittable(fmt: str, compression: str | None, text_unit: str) -> bool:
    if compression is not None:
        return False
    return fmt == "jsonl" or (fmt == "text" and text_unit in ("line", "paragraph"))


def plan_shards(files: list[Path], shard_bytes: int, text_unit: str = "file") -> list[Shard]:
    """Shards for `files` in input order; large splittable files become several byte ranges."""
    shards: list[Shard] = []
    for f in files:
        fmt, comp = detect_format(f)
        assert fmt is not None
        try:
            size = f.stat().st_size
        except OSError:
            size = 0
        if not splittable(fmt, comp, text_unit) or size <= shard_bytes:
            shards.append(Shard(len(shards), str(f), fmt, comp))
            continue
        sep = b"\n\n" if fmt == "text" and text_unit == "paragraph" else b"\n"
        for start, end, line in _byte_ranges(f, size, shard_bytes, sep):
            shards.append(Shard(len(shards), str(f), fmt, comp, start, end, line))
    return shards


def _byte_ranges(path: Path, size: int, shard_bytes: int, sep: bytes) -> list[tuple[int, int, int]]:
    """Cut points at the first `sep` after every multiple of `shard_bytes`, with line numbers.

    One sequential pass over the file (counting newlines in 16 MiB blocks), done once by the
    planner so the workers need not count lines before their range.
    """
    cuts = [0]
    target = shard_bytes
    with open(path, "rb") as f:
        while target < size:
            f.seek(target)
            window = f.read(1 << 20)
            pos = window.find(sep)
            while pos < 0 and len(window) < size - target:
                more = f.read(1 << 20)
                if not more:
                    break
                window += more
                pos = window.find(sep)
            if pos < 0:
                break
            cut = target + pos + len(sep)
            if cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            target = max(cut, target) + shard_bytes
        lines = [1]
        f.seek(0)
        pos, count = 0, 1
        for cut in cuts[1:]:
            while pos < cut:
                block = f.read(min(_SCAN_CHUNK, cut - pos))
                count += block.count(b"\n")
                pos += len(block)
            lines.append(count)
    ends = cuts[1:] + [-1]
    return list(zip(cuts, ends, lines, strict=False))


def total_bytes(shards: list[Shard]) -> int:
    """Bytes of input the shards cover (compressed size for compressed files)."""
    out = 0
    for s in shards:
        if s.end >= 0:
            out += s.end - s.start
        else:
            try:
                out += os.path.getsize(s.path) - s.start
            except OSError:
                pass
    return out
