"""Artifacts on disk: atomic writes, content hashes and `manifest.json`.

Every artifact llmchain writes (documents, tokenizer, shards, checkpoints, models, reports) goes
through `atomic_write*` or `atomic_dir`, so a crash leaves the previous valid file or nothing, never
a truncated file with a valid name; and each artifact directory gets a `manifest.json` that records
what it was made from, so a model card can trace a model back to its data.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmchain import __version__

MANIFEST = "manifest.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path) -> None:
    # mkstemp/mkdtemp create 0600/0700 for safety while the temp name exists; the finished artifact
    # gets the ordinary permissions a plain open()/mkdir() would give, so it can be shared.
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is flushed (no-op where unsupported).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it onto `path`.

    On an exception the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _default_mode(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and rename it onto `path` when the block succeeds.

    An existing `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _default_mode(tmp)
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
                if p.stat().st_mode & 0o777 == 0o600:
                    _default_mode(p)  # a file made by atomic_path inside the dir
        if path.exists():
            old = path.with_name(f"{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a directory (relative names + file hashes, sorted).

    Temp files, `manifest.json` itself and hidden files are left out, so the hash describes content.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if not p.is_file() or p.name == MANIFEST or ".tmp-" in rel or any(s.startswith(".") for s in rel.split("/")):
            continue
        h.update(rel.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict[str, str]:
    """Versions of llmchain, Python and the main libraries (those importable), for manifests."""
    out = {"llmchain": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "numpy", "tokenizers", "transformers", "safetensors"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = str(mod.__version__)
    return out


def write_manifest(
    directory: str | os.PathLike,
    kind: str,
    *,
    inputs: dict[str, str | os.PathLike] | list[str | os.PathLike] | None = None,
    config: Any = None,
    counts: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    hash_inputs: bool = True,
) -> dict[str, Any]:
    """Write `directory/manifest.json` atomically and return it.

    `inputs` maps a role ("documents", "tokenizer", ...) or just lists paths; each is recorded with
    its sha256 (file or directory content hash) when `hash_inputs`.
    """
    if isinstance(inputs, (list, tuple)):
        inputs = {str(i): p for i, p in enumerate(inputs)}
    recorded = {}
    for role, p in (inputs or {}).items():
        p = Path(p)
        entry: dict[str, Any] = {"path": str(p.resolve())}
        if hash_inputs and p.exists():
            entry["sha256"] = sha256_path(p)
        recorded[role] = entry
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    manifest = {
        "kind": kind,
        "llmchain_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": recorded,
        "config": config,
        "counts": counts or {},
        "versions": versions(),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of an artifact directory, or None when it has none (or it is unreadable)."""
    p = Path(directory) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
