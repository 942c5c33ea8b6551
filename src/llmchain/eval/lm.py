"""`llmchain eval lm`: the model's loss, perplexity and bits-per-byte beside byte-level n-gram models.

The model side is `llmchain.eval.perplexity.evaluate_lm`. The baselines are interpolated modified
Kneser-Ney n-gram models on UTF-8 bytes (orders 3 and 5 by default), fitted on the training split
and scored on exactly the evaluated text, in bits per byte — a unit that compares models with
different tokenizers, and models with classical methods.

Where the training text comes from:
- data = a token-shards dir: its train split, decoded back to text with the tokenizer that made it
  (byte-level BPE decodes losslessly); the evaluated text is the decoded val split;
- data = a text file: `--train-text FILE`, or else the train split of the shards the model was
  trained on (found through the model's manifest.json). Neither → an error asking for --train-text.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.artifacts import read_manifest, sha256_file
from llmchain.data.pack import read_shards
from llmchain.errors import UserError
from llmchain.eval.baselines import DOC_SEP, byte_stream, ngram_bits_per_byte
from llmchain.eval.bootstrap import ratio_intervals, verdicts
from llmchain.eval.io import read_json_dict, write_report

COLUMNS = ["bits_per_byte", "loss", "perplexity"]
DEFAULT_ORDERS = (3, 5)
# Without a model there are no model windows to resample: the baselines' text is cut into chunks of
# this many byte-stream symbols, about the text of one 256-token model window.
CHUNK_SYMBOLS = 1024


def shards_tokenizer(shards_dir: Path, model_dir: Path | None = None) -> Path:
    """The tokenizer dir that made `shards_dir`: the model's (when its tokenizer.json hash matches
    shards.json's tokenizer_sha256) or the one recorded in the shards' manifest.json."""
    info = read_shards(shards_dir)
    want = info.get("tokenizer_sha256")
    candidates = []
    if model_dir is not None:
        candidates.append(model_dir)
    recorded = ((read_manifest(shards_dir) or {}).get("inputs") or {}).get("tokenizer") or {}
    if recorded.get("path"):
        candidates.append(Path(recorded["path"]))
    for c in candidates:
        tj = c / "tokenizer.json"
        if tj.is_file() and (want is None or sha256_file(tj) == want):
            return c
    raise UserError(f"{shards_dir}: cannot find the tokenizer these shards were made with (needed to decode the "
                    "train split for the n-gram baseline); pass a text file with --train-text instead")  # fmt: skip


def decode_split(shards_dir: Path, split: str, tokenizer_dir: Path, max_tokens: int | None = None) -> list[str]:
    """The documents of one split as text (EOS-separated token runs decoded with the tokenizer)."""
    from tokenizers import Tokenizer

    from llmchain.data.pack import open_split

    info = read_shards(shards_dir)
    eos = info.get("eos_token_id")
    arrays = open_split(shards_dir, split)
    if not arrays:
        return []
    tokens = np.concatenate([np.asarray(a) for a in arrays])
    if max_tokens is not None:
        tokens = tokens[:max_tokens]  # the same first N tokens that evaluate_lm scores
    cuts = np.flatnonzero(tokens == eos) if eos is not None else np.zeros(0, dtype=np.int64)
    pieces = [p for p in np.split(tokens, cuts) if p.size]
    docs = [p[1:] if eos is not None and p[0] == eos else p for p in pieces]
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return tok.decode_batch([d.tolist() for d in docs], skip_special_tokens=False)


def check_model_data(model_dir: Path, data: Path) -> None:
    """UserError when the shards were made with another tokenizer than the model's (hash or vocab)."""
    from llmchain.model.io import read_config

    config = read_config(model_dir)
    tok = read_json_dict(model_dir / "tokenizer.json")
    if tok is not None:
        vocab = {**(tok.get("model") or {}).get("vocab", {}), **{t.get("content"): 0 for t in tok.get("added_tokens") or []}}
        if len(vocab) > config.vocab_size:
            raise UserError(f"{model_dir}: the tokenizer has {len(vocab)} tokens but the model only "
                            f"{config.vocab_size}; tokenizer and model do not belong together")  # fmt: skip
    if not data.is_dir():
        return
    info = read_shards(data)
    vocab = info.get("vocab_size")
    if isinstance(vocab, int) and vocab > config.vocab_size:
        raise UserError(f"{data}: shards use a {vocab}-token vocabulary but {model_dir} has {config.vocab_size}; "
                        "the model and the data were made with different tokenizers")  # fmt: skip
    want, tj = info.get("tokenizer_sha256"), model_dir / "tokenizer.json"
    if want and tj.is_file() and sha256_file(tj) != want:
        raise UserError(f"{data}: shards were made with another tokenizer than {model_dir}'s (tokenizer.json "
                        "hashes differ); pack the data with the model's tokenizer")  # fmt: skip


def model_training_shards(model_dir: Path) -> Path | None:
    """The shards dir a model was trained on, from its manifest (or its run's config.yaml)."""
    inputs = (read_manifest(model_dir) or {}).get("inputs") or {}
    for entry in inputs.values():
        p = Path(entry.get("path", "")) if isinstance(entry, dict) else None
        if p is not None and (p / "shards.json").is_file():
            return p
    return None


def evaluate_language_model(
    data: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    orders: tuple[int, ...] | list[int] = DEFAULT_ORDERS,
    train_text: str | os.PathLike | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    device: str = "auto",
    stride: int | None = None,
) -> dict[str, Any]:
    """Score the model (if any) and byte-level n-gram baselines (one per order; none for `orders=()`).

    Returns the report dict; report["systems"][i] has name, title, baseline, bits_per_byte and, for
    the model, loss/perplexity/tokens. Raises UserError for missing inputs, a tokenizer/model mismatch,
    or a text file without a known training text.
    """
    data = Path(data)
    if not data.exists():
        raise UserError(f"{data}: no such file or directory (give a token-shards dir or a text file)")
    if data.is_dir() and not (data / "shards.json").is_file():
        raise UserError(f"{data}: not a token-shards dir (no shards.json); make one with `llmchain data pack`")
    mdir = Path(model_dir) if model_dir is not None else None
    if mdir is not None and not mdir.is_dir():
        raise UserError(f"{mdir}: no such model directory")
    if train_text is not None and not Path(train_text).is_file():
        raise UserError(f"{train_text}: no such file (--train-text)")
    systems: list[dict[str, Any]] = []
    eval_bytes = None
    windows: dict[str, np.ndarray] | None = None
    symbol_bits: dict[str, np.ndarray] = {}
    eval_docs: list[str] = []
    if mdir is not None:
        from llmchain.eval.perplexity import evaluate_lm

        check_model_data(mdir, data)
        m = evaluate_lm(mdir, data, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, stride=stride, device=device,
                        progress=sys.stderr.isatty(), per_window=True)  # fmt: skip
        windows = m.pop("windows", None)
        eval_bytes = m["bytes"]
        systems.append({"name": "model", "title": f"model ({mdir.name})", "baseline": False, **m})
    source = None
    if orders:
        if data.is_dir():
            tok_dir = shards_tokenizer(data, mdir)
            eval_docs = decode_split(data, "val", tok_dir, max_tokens)
            if train_text is not None:
                train_docs, source = [_read_text(Path(train_text))], str(Path(train_text).resolve())
            else:
                train_docs, source = decode_split(data, "train", tok_dir), f"{data.resolve()} (train split)"
        else:
            text = _read_text(data)
            if eval_bytes is not None and max_tokens is not None:
                text = text.encode("utf-8")[:eval_bytes].decode("utf-8", errors="ignore")
            eval_docs = [text]
            if train_text is not None:
                train_docs, source = [_read_text(Path(train_text))], str(Path(train_text).resolve())
            else:
                shards = model_training_shards(mdir) if mdir is not None else None
                if shards is None:
                    raise UserError(f"{data}: the n-gram baseline needs a training text; pass --train-text FILE "
                                    "(or --baseline none)")  # fmt: skip
                tok_dir = shards_tokenizer(shards, mdir)
                train_docs, source = decode_split(shards, "train", tok_dir), f"{shards} (train split)"
        for order in orders:
            r = ngram_bits_per_byte(train_docs, eval_docs, order=order, symbol_bits=True)
            r.pop("name")
            symbol_bits[f"ngram{order}"] = r.pop("symbol_bits")
            systems.append({"name": f"ngram{order}", "title": f"{order}-gram, bytes (Kneser-Ney)", "baseline": True,
                            **r})  # fmt: skip
    notes = []
    if mdir is not None and orders and data.is_dir() and not systems[0].get("bytes_exact", True):
        # --max-tokens on shards: evaluate_lm scales the split's byte count; the decoded text gives it exactly
        m = systems[0]
        exact = systems[1]["bytes"]
        m["bits_per_byte_proportional"] = m["bits_per_byte"]
        m.update(bits_per_byte=m["loss"] * m["tokens"] / math.log(2) / exact, bytes=exact, bytes_exact=True)
        notes.append(f"bytes of the first {max_tokens:,} tokens counted exactly by decoding them")
    if mdir is not None and orders and systems[0].get("bytes") != systems[1].get("bytes"):
        notes.append(f"the model scored {systems[0].get('bytes')} bytes, the baselines {systems[1].get('bytes')} "
                     "(decoded text); bits-per-byte still compares, the texts differ slightly")  # fmt: skip
    notes += add_intervals(systems, windows, symbol_bits, eval_docs, has_model=mdir is not None)
    notes += verdicts(systems, "bits_per_byte", higher_is_better=False)
    return {
        "kind": "eval-lm",
        "task": "language modelling",
        "model": str(mdir.resolve()) if mdir is not None else None,
        "data": str(data.resolve()),
        "train_text": source,
        "n": systems[0].get("bytes") if systems else None,
        "columns": COLUMNS,
        "primary": "bits_per_byte",
        "higher_is_better": False,
        "config": {"orders": list(orders), "batch_size": batch_size, "seq_len": seq_len, "max_tokens": max_tokens,
                   "stride": stride},
        "systems": systems,
        "notes": notes,
    }


def add_intervals(systems: list[dict[str, Any]], windows: dict[str, np.ndarray] | None,
                  symbol_bits: dict[str, np.ndarray], eval_docs: list[str], has_model: bool) -> list[str]:
    """Give each system a "ci" (95 % bootstrap intervals) from resampled evaluation windows; returns notes.

    The resampled items are the model's evaluation windows: a window's summed nats (model) or summed bits
    (n-grams, over the same bytes) and its UTF-8 bytes; a resample's bits/byte is Σ bits / Σ bytes. All
    systems use the same resampled windows (paired). Without a model, the baselines' byte stream is cut
    into CHUNK_SYMBOLS-symbol chunks instead. A baseline whose text does not line up with the model's
    windows (its decoded bytes differ) gets no interval, and a note says so.
    """
    by_name = {s["name"]: s for s in systems}
    if windows is None and has_model:
        return ["no 95 % intervals: the model's tokenizer does not give each token's byte length"]
    if windows is None:
        if not symbol_bits:
            return []
        stream, _ = byte_stream(eval_docs)
        starts = np.arange(0, stream.size, CHUNK_SYMBOLS)
        text_byte = np.concatenate([[0], np.cumsum(stream != DOC_SEP)])
        ends = np.minimum(starts + CHUNK_SYMBOLS, stream.size)
        windows = {"symbols": ends - starts, "bytes": text_byte[ends] - text_byte[starts]}
        unit = f"{len(starts):,} chunks of {CHUNK_SYMBOLS} bytes"
    else:
        unit = f"{len(windows['bytes']):,} evaluation windows"
    notes = []
    w_bytes = np.asarray(windows["bytes"], dtype=np.float64)
    model = by_name.get("model")
    if model is not None and "nats" in windows and w_bytes.sum() > 0:
        # scale to the reported byte count (proportional when --max-tokens cut the shards' val split)
        scaled = w_bytes * (model["bytes"] / w_bytes.sum())
        ci = ratio_intervals({"bits_per_byte": windows["nats"]}, scaled, scale=1 / math.log(2))
        ci.update(ratio_intervals({"loss": windows["nats"]}, windows["tokens"]))
        ci["perplexity"] = [math.exp(min(v, 700.0)) for v in ci["loss"]]
        model["ci"] = ci
    offsets = np.concatenate([[0], np.cumsum(windows["symbols"])])
    for name, bits in symbol_bits.items():
        s = by_name[name]
        if bits.size != offsets[-1] or s["bytes"] != int(w_bytes.sum()):
            notes.append(f"no 95 % interval for {s['title']}: its text ({s['bytes']:,} bytes) does not line "
                         f"up with the model's windows ({int(w_bytes.sum()):,} bytes)")  # fmt: skip
            continue
        cum = np.concatenate([[0.0], np.cumsum(bits, dtype=np.float64)])
        s["ci"] = ratio_intervals({"bits_per_byte": cum[offsets[1:]] - cum[offsets[:-1]]}, w_bytes)
    if any(s.get("ci") for s in systems):
        notes.append(f"95 % intervals: paired bootstrap over {unit} (1,000 resamples; Σ bits / Σ bytes each)")
    return notes


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def run_lm_eval(out_dir: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """`evaluate_language_model(**kwargs)` + write OUT/report.json and a bits-per-byte bar chart."""
    from llmchain.eval import plots

    report = evaluate_language_model(**kwargs)

    def draw(tmp: Path) -> list[str]:
        return [plots.bars(tmp / "bits_per_byte.png", report["systems"], "bits_per_byte",
                           "bits per byte (lower is better)")]  # fmt: skip

    inputs = {"model": report["model"], "data": report["data"], "train_text": kwargs.get("train_text")}
    return report, write_report(out_dir, report, inputs, draw)


def summary_line(report: dict[str, Any]) -> str:
    """One line: the model's bits/byte against each baseline ("beats X by d" / "behind Y by d")."""
    model = next((s for s in report["systems"] if not s.get("baseline")), None)
    if model is None:
        return ""
    parts = []
    for b in (s for s in report["systems"] if s.get("baseline")):
        d = b["bits_per_byte"] - model["bits_per_byte"]
        parts.append(f"{'beats' if d > 0 else 'behind'} {b['title']} ({b['bits_per_byte']:.4f}) by {abs(d):.4f}")
    return f"model {model['bits_per_byte']:.4f} bits/byte: " + "; ".join(parts) if parts else ""
