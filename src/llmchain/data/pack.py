"""Documents → flat token shards for pretraining (nanoGPT's format) + `shards.json`.

Each split is a sequence of `{split}-00000.bin`, `{split}-00001.bin` ... files of raw little-endian
uint16 (vocab ≤ 65,536) or uint32 token ids, read with `numpy.memmap`. Every document is preceded by
the end-of-text token, so documents are separated by it and the model sees a document boundary
before each document's first token. Special-token strings inside a document's text are encoded as
plain text, so an EOS id in a shard always means a boundary.

`shards.json` records per split the tokens (EOS included), documents and UTF-8 bytes of text (EOS
excluded): bits-per-byte = total loss in bits / bytes, comparable across tokenizers.

Split: `documents` sends every k-th document to val (k = 1/val_fraction: exact, spread evenly and
deterministic for a given input order); `chars` cuts each document's text at (1 - val_fraction) of
its characters — with one text (tinyshakespeare) that is the standard 90/10 character split.
Tokenization runs in worker processes over batches of documents; outputs keep the input order, so
the shards are identical whatever the number of workers.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.artifacts import atomic_dir, atomic_write_json, write_manifest
from llmchain.errors import UserError
from llmchain.tokenizer import EOS, check_tokenizer_dir, iter_documents, split_document, tokenizer_sha256

SHARDS_JSON = "shards.json"
SPLITS = ("train", "val")
BATCH_CHARS = 1 << 20  # characters per worker task: big enough to amortise pickling, small for balance

_worker_tok = None  # the tokenizer, once per worker process


def _load_tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a boundary
    return tok


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker_tok = _load_tokenizer(tokenizer_json)


def _encode(tok, texts: list[str], eos_id: int, dtype: str) -> list[np.ndarray]:
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return [np.array([eos_id, *e.ids], dtype=dtype) for e in encs]


def _encode_in_worker(texts: list[str], eos_id: int, dtype: str) -> list[np.ndarray]:
    return _encode(_worker_tok, texts, eos_id, dtype)


class _SplitWriter:
    """Appends token arrays to `{split}-NNNNN.bin` files, starting a new file every `shard_tokens`."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.files: list[str] = []
        self.tokens = self.documents = self.bytes = 0
        self._f = None
        self._in_file = 0

    def write(self, ids: np.ndarray, n_bytes: int) -> None:
        self.documents += 1
        self.bytes += n_bytes
        self.tokens += len(ids)
        while len(ids):
            if self._f is None or self._in_file >= self.shard_tokens:
                self._next_file()
            take = ids[: self.shard_tokens - self._in_file]  # a document may continue in the next file
            take.astype(self.dtype.newbyteorder("<"), copy=False).tofile(self._f)
            self._in_file += len(take)
            ids = ids[len(take) :]

    def _next_file(self) -> None:
        if self._f is not None:
            self._f.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(name)
        self._f = open(self.out_dir / name, "wb")
        self._in_file = 0

    def close(self) -> dict[str, Any]:
        if self._f is not None:
            self._f.close()
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes, "files": self.files}


def _pieces(docs_path: Path, val_fraction: float, split_by: str) -> Iterator[tuple[str, str, int]]:
    """(split, text, utf-8 bytes) for every piece of every document, in order; empty pieces are skipped."""
    for i, doc in enumerate(iter_documents(docs_path)):
        for split, piece in split_document(i, doc["text"], val_fraction, split_by):
            if not piece:
                continue
            try:
                n_bytes = len(piece.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise UserError(
                    f"{docs_path}: document {doc.get('id', i)!r} has invalid Unicode at character "
                    f"{e.start} (a lone surrogate); repair it with `llmchain data prepare`"
                ) from None
            yield split, piece, n_bytes


def _batches(pieces: Iterator[tuple[str, str, int]]) -> Iterator[list[tuple[str, str, int]]]:
    batch: list[tuple[str, str, int]] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[1])
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encoded_batches(batches: Iterator[list], tokenizer_json: str, eos_id: int, dtype: str, workers: int):
    """(batch, token arrays) in input order; a bounded window of batches is in flight at a time."""
    head = list(itertools.islice(batches, 2))
    batches = itertools.chain(head, batches)
    if workers <= 1 or len(head) < 2:  # one batch (or one worker): a process pool would only cost start-up
        tok = _load_tokenizer(tokenizer_json)
        for batch in batches:
            yield batch, _encode(tok, [t for _, t, _ in batch], eos_id, dtype)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold torch/tokenizers threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,)) as pool:
        window: collections.deque = collections.deque()
        for batch in batches:
            window.append(
                (batch, pool.apply_async(_encode_in_worker, ([t for _, t, _ in batch], eos_id, dtype)))
            )
            if len(window) >= 2 * workers:  # bounded: a huge corpus never sits in memory at once
                done, result = window.popleft()
                yield done, result.get()
        while window:
            done, result = window.popleft()
            yield done, result.get()


def _eos_id(tokenizer_dir: Path, tok) -> int:
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    eos = EOS
    if cfg_path.is_file():
        eos_cfg = json.loads(cfg_path.read_text(encoding="utf-8")).get("eos_token") or EOS
        eos = eos_cfg["content"] if isinstance(eos_cfg, dict) else eos_cfg
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise UserError(f"{tokenizer_dir}: the tokenizer has no end-of-text token {eos!r}")
    return eos_id


def pack_documents(
    docs_path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    split_by: str = "documents",
    workers: int | None = None,
    shard_tokens: int = 100_000_000,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Tokenize the documents at `docs_path` into a shards dir at `out_dir`; returns `shards.json`'s content.

    Raises UserError for a missing input or tokenizer, a bad option, or a split that comes out empty
    (e.g. one document split by documents: use split_by="chars").
    """
    docs_path, tokenizer_dir = Path(docs_path), check_tokenizer_dir(tokenizer_dir)
    if not docs_path.exists():
        raise UserError(
            f"{docs_path}: no such file or directory (documents: a prepared dir, .jsonl(.gz) or .txt)"
        )
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction} must be in [0, 1)")
    if split_by not in ("documents", "chars"):
        raise UserError(f"--split-by {split_by!r}: choose documents or chars")
    workers = workers or min(os.cpu_count() or 1, 8)
    tokenizer_json = str(tokenizer_dir / "tokenizer.json")
    tok = _load_tokenizer(tokenizer_json)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eos_id = _eos_id(tokenizer_dir, tok)
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)

    with atomic_dir(out_dir) as tmp, _progress(show_progress) as advance:
        writers = {s: _SplitWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        batches = _batches(_pieces(docs_path, val_fraction, split_by))
        for batch, arrays in _encoded_batches(batches, tokenizer_json, eos_id, dtype.name, workers):
            for (split, _, n_bytes), ids in zip(batch, arrays, strict=True):
                writers[split].write(ids, n_bytes)
            advance(len(batch), sum(len(a) for a in arrays))
        splits = {s: w.close() for s, w in writers.items()}
        if splits["train"]["documents"] == 0:
            raise UserError(f"{docs_path}: no text to pack (no documents, or all empty)")
        if val_fraction > 0 and splits["val"]["documents"] == 0:
            raise UserError(
                f"{docs_path}: {splits['train']['documents']} document(s) are too few for --val-fraction "
                f"{val_fraction} split by documents; use --split-by chars (e.g. for one long text)"
            )
        meta = {
            "format": "llmchain-token-shards/1",
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_token_id": eos_id,
            "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
            "split_by": split_by,
            "val_fraction": val_fraction,
            "splits": splits,
        }
        atomic_write_json(tmp / SHARDS_JSON, meta)
        write_manifest(
            tmp,
            "token-shards",
            inputs={"documents": docs_path, "tokenizer": tokenizer_dir},
            config={"val_fraction": val_fraction, "split_by": split_by, "shard_tokens": shard_tokens},
            counts={f"{s}_{k}": v[k] for s, v in splits.items() for k in ("tokens", "documents", "bytes")},
        )
    return meta


class _progress:
    """A rich progress line (documents, tokens, rate) when enabled; a no-op callback otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return lambda docs, tokens: None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.p = Progress(SpinnerColumn(), TextColumn("packing: {task.fields[docs]:,} documents, "
                          "{task.completed:,.0f} tokens ({task.speed} tok/s)" ), TimeElapsedColumn(),
                          transient=True)  # fmt: skip
        self.p.__enter__()
        task = self.p.add_task("pack", total=None, docs=0)
        state = {"docs": 0}

        def advance(docs: int, tokens: int) -> None:
            state["docs"] += docs
            self.p.update(task, advance=tokens, docs=state["docs"])

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.p.__exit__(*exc)


def read_shards(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """The `shards.json` of a shards dir — the one reader of the format (pretrain and eval use it too).
    UserError naming the dir or file when it is missing, unreadable, or its dtype is not uint16/uint32."""
    path = Path(shards_dir) / SHARDS_JSON
    if not path.is_file():
        raise UserError(f"{shards_dir}: not a token-shards dir (no {SHARDS_JSON}); make one with `llmchain data pack`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32"):
        got = meta.get("dtype") if isinstance(meta, dict) else meta
        raise UserError(f"{path}: field 'dtype' must be uint16 or uint32, got {got!r}")
    return meta


def split_info(meta: dict[str, Any], split: str) -> dict[str, Any]:
    """The per-split entry (tokens, documents, bytes, files) of a shards.json; {} when absent."""
    splits = meta.get("splits", meta)
    entry = splits.get(split) if isinstance(splits, dict) else None
    return entry if isinstance(entry, dict) else {}


def open_split(shards_dir: str | os.PathLike, split: str) -> list[np.memmap]:
    """The token files of `split` ("train"/"val") as read-only memmaps, in order (concatenated they are the
    split); [] when the split has none. UserError when shards.json lists a file that is missing."""
    shards_dir = Path(shards_dir)
    meta = read_shards(shards_dir)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    files = split_info(meta, split).get("files") or sorted(p.name for p in shards_dir.glob(f"{split}-*.bin"))
    arrays = []
    for name in files:
        name = name["path"] if isinstance(name, dict) else name
        p = shards_dir / Path(name).name
        if not p.is_file():
            raise UserError(f"{shards_dir / SHARDS_JSON}: lists {name}, which is missing")
        if p.stat().st_size:  # an empty file cannot be memory-mapped (and holds no tokens)
            arrays.append(np.memmap(p, dtype=dtype, mode="r"))
    return arrays
