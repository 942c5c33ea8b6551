"""Language-model metrics: loss (nats/token), perplexity and bits-per-byte.

bits-per-byte = total nats / ln 2 / total UTF-8 bytes of the evaluated text. Unlike perplexity it does
not depend on the tokenizer, so models with different vocabularies (and character-level baselines,
where a byte is a character for ASCII text) compare on one scale.

The text is cut into consecutive windows of `seq_len` predicted tokens; every token is predicted
exactly once, with the tokens before it in its window as context (the first window starts after the
document separator, EOS, so the first real token is predicted too). With `stride` < `seq_len` the
windows slide instead (the usual way perplexity is reported): each window scores only its last
`stride` tokens and sees the `seq_len - stride` tokens before them as context — still every token
scored exactly once, each with more context, at seq_len / stride times the compute.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llmchain.data.pack import open_split, read_shards, split_info
from llmchain.errors import UserError

# --- the metric ---------------------------------------------------------------------------------


def windows(tokens: np.ndarray, seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive windows of `seq_len` predicted tokens: window k covers
    tokens[start:end] and predicts tokens[start+1:end]; consecutive windows overlap by one token."""
    n = len(tokens)
    return [(s, min(s + seq_len + 1, n)) for s in range(0, max(n - 1, 0), seq_len)]


def strided_windows(tokens: np.ndarray, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, skip) of sliding windows: window k feeds tokens[start:end-1] (≤ seq_len tokens) and
    scores its targets tokens[start+1:end] except the first `skip`, i.e. it scores tokens[start+1+skip:end].

    The first window scores all of its (up to seq_len) targets; every later one scores the next `stride`
    targets with the `seq_len - stride` tokens before them as context. Each of tokens[1:] is scored
    exactly once; stride == seq_len gives exactly `windows(tokens, seq_len)` (skip 0).
    """
    if not 1 <= stride <= seq_len:
        raise UserError(f"--stride {stride} must be between 1 and the window length ({seq_len})")
    n = len(tokens)
    if n < 2:
        return []
    end = min(seq_len + 1, n)
    spans = [(0, end, 0)]
    while end < n:
        new_end = min(end + stride, n)
        start = max(end - 1 - (seq_len - stride), 0)
        spans.append((start, new_end, end - 1 - start))
        end = new_end
    return spans


def loss_sums(model: torch.nn.Module, tokens: np.ndarray, spans: list[tuple[int, ...]], batch_size: int,
              device: torch.device, autocast=None, progress=None,
              per_window: list[float] | None = None) -> tuple[float, int]:
    """(sum of next-token nats, tokens predicted) of `model` over the windows `spans` of `tokens`:
    (start, end) scores all targets tokens[start+1:end]; (start, end, skip) all but the first `skip`.
    `per_window`, when given, gets each window's summed nats appended (in span order)."""
    import contextlib

    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for i in range(0, len(spans), batch_size):
        chunk = spans[i:i + batch_size]
        width = max(span[1] - span[0] for span in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (s, e, *skip) in enumerate(chunk):
            w = torch.from_numpy(np.asarray(tokens[s:e], dtype=np.int64))
            x[r, : len(w) - 1], y[r, : len(w) - 1] = w[:-1], w[1:]
            if skip:
                y[r, : skip[0]] = -100  # context only: scored by an earlier window
        x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            out = model(x)
        logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
        rows = nll.view(len(chunk), width).double().sum(dim=1)
        total += rows.sum()
        if per_window is not None:
            per_window.extend(rows.tolist())
        count += int((y != -100).sum())
        if progress is not None:
            progress(len(chunk))
    return float(total), count


def metrics_from(nats: float, tokens: int, n_bytes: float) -> dict[str, float]:
    loss = nats / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else float("nan"),
    }


def token_byte_lengths(tokenizer_json: Path, vocab_size: int,
                       separators: tuple[int, ...] = ()) -> np.ndarray | None:
    """UTF-8 bytes each token id stands for ([vocab_size] int64); None without a readable tokenizer.json.

    Byte-level BPE vocab strings spell one byte per character (the ByteLevel alphabet), so the count is
    exact even for tokens holding part of a multi-byte character; other tokens count the bytes of their
    decoded text. Special tokens and `separators` (EOS between documents) stand for no text: 0 bytes.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception:  # a missing or foreign tokenizer file: no per-window bytes, so no intervals
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for piece, i in tok.get_vocab(with_added_tokens=False).items():
        if i < vocab_size:
            one_char_per_byte = all(c in alphabet for c in piece)
            lengths[i] = len(piece) if one_char_per_byte else len(tok.decode([i]).encode("utf-8"))
    for i, added in tok.get_added_tokens_decoder().items():
        if i < vocab_size:
            lengths[i] = 0 if added.special else len(added.content.encode("utf-8"))
    for i in separators:
        if i is not None and 0 <= i < vocab_size:
            lengths[i] = 0
    return lengths


def window_targets(spans: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """[a, b): the token positions each window scores (they tile tokens[1:] in order)."""
    return [(s + 1 + (skip[0] if skip else 0), e) for s, e, *skip in spans]


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _text_tokens(model_dir: Path, text_file: Path, max_tokens: int | None) -> tuple[np.ndarray, int, bool]:
    """[EOS] + tokens of the file, and the UTF-8 bytes those tokens cover (exact)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: has no usable tokenizer files to encode {text_file} ({e})") from None
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{text_file}: not UTF-8 text") from None
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]  # no "longer than max length" warning
    start = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_bytes = len(tok.decode(ids).encode("utf-8"))
    ids = ([start] if start is not None else []) + ids
    return np.asarray(ids, dtype=np.int64), n_bytes, True


def _shard_tokens(shards_dir: Path, max_tokens: int | None, eos: int | None) -> tuple[np.ndarray, float, bool]:
    """[EOS] + the val split's tokens, and their UTF-8 bytes (from shards.json; scaled when truncated)."""
    info = read_shards(shards_dir)
    val = split_info(info, "val")
    arrays = open_split(shards_dir, "val")
    if not arrays:
        raise UserError(f"{shards_dir}: the val split is empty; pack with a val fraction > 0")
    tokens = np.concatenate([np.asarray(a) for a in arrays]).astype(np.int64)
    n_bytes, exact = float(val.get("bytes") or 0), True
    if not n_bytes:
        raise UserError(f"{shards_dir / 'shards.json'}: no UTF-8 byte count for the val split (field 'bytes')")
    if max_tokens is not None and len(tokens) > max_tokens:
        n_bytes, exact = n_bytes * max_tokens / len(tokens), False
        tokens = tokens[:max_tokens]
    if eos is not None and tokens[0] != eos:
        tokens = np.concatenate([[eos], tokens])
    return tokens, n_bytes, exact


def evaluate_lm(
    model_dir: str | Path,
    data: str | Path,
    batch_size: int = 8,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    stride: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = False,
    per_window: bool = False,
) -> dict[str, Any]:
    """Loss, perplexity and bits-per-byte of the model in `model_dir` on `data`.

    `data` is a token-shards dir (its val split; bytes from shards.json) or a UTF-8 text file (encoded
    with the model dir's tokenizer). `seq_len` defaults to the model's context (≤ 1024); `max_tokens`
    evaluates only the first N tokens (bytes then exact for text files, proportional for shards).
    `stride` (1..seq_len; default seq_len: non-overlapping windows) slides the windows by `stride`
    tokens, each scoring only its last `stride` tokens (see `strided_windows`).
    Returns dict(loss, perplexity, bits_per_byte, tokens, bytes, bytes_exact, seq_len, stride); with
    `per_window`, also "windows": {nats, tokens, bytes, symbols} arrays, one entry per window (symbols =
    bytes plus one per document separator: the positions a byte-level n-gram predicts), or None when the
    tokenizer's byte lengths are unknown. Raises
    UserError for a missing/unusable model dir or data, or a stride outside 1..seq_len.
    """
    from llmchain.model.io import load_model, read_config

    model_dir, data = Path(model_dir), Path(data)
    if not data.exists():
        raise UserError(f"{data}: no such file or directory")
    config = read_config(model_dir)
    seq_len = seq_len or min(config.max_position_embeddings, 1024)
    if seq_len > config.max_position_embeddings:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context ({config.max_position_embeddings})")
    if stride is not None and not 1 <= stride <= seq_len:
        raise UserError(f"--stride {stride} must be between 1 and the window length (--seq-len {seq_len})")
    if data.is_dir():
        eos = config.eos_token_id if config.eos_token_id is not None else config.bos_token_id
        tokens, n_bytes, exact = _shard_tokens(data, max_tokens, eos)
    else:
        tokens, n_bytes, exact = _text_tokens(model_dir, data, max_tokens)
    if len(tokens) < 2:
        raise UserError(f"{data}: too little text to evaluate (needs at least one token)")
    if int(tokens.max()) >= config.vocab_size:
        raise UserError(f"{data}: token id {int(tokens.max())} ≥ the model's vocab ({config.vocab_size}); "
                        "the data was made with another tokenizer")  # fmt: skip
    dev = _pick_device(device)
    model = load_model(model_dir, device=dev)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=dev.type, dtype=dtype) if dtype is not None else None
    stride = seq_len if stride is None else stride
    spans = windows(tokens, seq_len) if stride == seq_len else strided_windows(tokens, seq_len, stride)
    update = None
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("eval", total=len(spans))
        bar.start()

        def update(n: int) -> None:
            bar.advance(task, n)

    window_nats: list[float] | None = [] if per_window else None
    try:
        with torch.no_grad():
            nats, count = loss_sums(model, tokens, spans, batch_size, dev, autocast, update, window_nats)
    finally:
        if bar is not None:
            bar.stop()
    out = {**metrics_from(nats, count, n_bytes), "tokens": count, "bytes": int(round(n_bytes)),
           "bytes_exact": exact, "seq_len": seq_len, "stride": stride}  # fmt: skip
    if per_window:
        eos = config.eos_token_id if config.eos_token_id is not None else config.bos_token_id
        lengths = token_byte_lengths(model_dir / "tokenizer.json", config.vocab_size, (eos,))
        out["windows"] = None
        if lengths is not None:
            sep = (tokens == eos) if eos is not None else np.zeros(len(tokens), dtype=bool)
            byte_cum = np.concatenate([[0], np.cumsum(lengths[tokens])])
            sym_cum = np.concatenate([[0], np.cumsum(lengths[tokens] + sep)])
            t = np.asarray(window_targets(spans), dtype=np.int64)
            out["windows"] = {"nats": np.asarray(window_nats), "tokens": t[:, 1] - t[:, 0],
                              "bytes": byte_cum[t[:, 1]] - byte_cum[t[:, 0]],
                              "symbols": sym_cum[t[:, 1]] - sym_cum[t[:, 0]]}  # fmt: skip
    return out
