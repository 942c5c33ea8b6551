"""Pretraining: a Llama-family model from scratch on token shards, through the one loop (`loop.fit`).

Batches are random windows of the train split; window offsets for step s are drawn from a generator
seeded with (seed, s) for the whole global batch, and rank r takes its slice of it — so the data order
is a pure function of (seed, step, rank), a resumed run replays it exactly, and N processes see the
same global batch as one process with N× the batch. Periodic eval: fixed, evenly spaced val windows
(loss, perplexity, bits-per-byte). The finished model goes to RUN/final/ in HF format with the
tokenizer files, so it can be served and evaluated directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmchain.artifacts import atomic_write_text, sha256_file
from llmchain.config import PretrainConfig
from llmchain.data.pack import open_split, read_shards, split_info
from llmchain.errors import ConfigError, UserError
from llmchain.eval.perplexity import loss_sums, metrics_from
from llmchain.train.checkpoint import list_checkpoints
from llmchain.train.distributed import Runtime, describe_hardware, setup_runtime, teardown_runtime
from llmchain.train.loop import FitResult, fit


class TokenShards:
    """Random training windows of a shards split; `get_batch` is a pure function of (seed, step, rank)."""

    def __init__(self, shards_dir: str | Path, split: str, seq_len: int, rows_per_rank: int, seed: int):
        self.arrays = open_split(shards_dir, split)
        self.seq_len, self.rows, self.seed = seq_len, rows_per_rank, seed
        starts = np.array([max(len(a) - seq_len, 0) for a in self.arrays], dtype=np.int64)
        if not len(starts) or starts.sum() == 0:
            n = sum(len(a) for a in self.arrays)
            raise UserError(f"{shards_dir}: the {split} split has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                            "use a smaller --seq-len or more data")  # fmt: skip
        self._cum = np.cumsum(starts)

    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        """This rank's `rows_per_rank` windows of step `step`: input_ids and targets (B, seq_len), int64."""
        rng = np.random.default_rng([self.seed, step])
        picks = rng.integers(0, self._cum[-1], size=self.rows * world_size)[rank * self.rows:(rank + 1) * self.rows]
        files = np.searchsorted(self._cum, picks, side="right")
        offsets = picks - np.concatenate([[0], self._cum])[files]
        w = np.stack([np.asarray(self.arrays[f][o:o + self.seq_len + 1], dtype=np.int64)
                      for f, o in zip(files, offsets, strict=True)])  # fmt: skip
        w = torch.from_numpy(w)
        return {"input_ids": w[:, :-1], "targets": w[:, 1:]}


def val_eval_fn(shards_dir: Path, seq_len: int, batch_size: int, max_windows: int, bytes_per_token: float):
    """An `eval_fn` for the loop: fixed, evenly spaced val windows, split over ranks, summed over ranks."""
    arrays = open_split(shards_dir, "val")
    if not arrays:
        return None
    tokens = np.concatenate([np.asarray(a) for a in arrays])
    n_windows = max((len(tokens) - 1) // seq_len, 0)
    if n_windows == 0:
        return None
    picks = np.linspace(0, n_windows - 1, num=min(max_windows, n_windows)).round().astype(int)
    spans = sorted({(int(k) * seq_len, int(k) * seq_len + seq_len + 1) for k in picks})

    def evaluate(model: torch.nn.Module, rt: Runtime) -> dict[str, float]:
        # Equal shares per rank (FSDP needs every rank to run the same number of forward passes).
        share = max(len(spans) // rt.world_size, 1)
        mine = spans[rt.rank * share:(rt.rank + 1) * share] if rt.world_size > 1 else spans
        nats, count = loss_sums(model, tokens, mine, batch_size, rt.device)
        sums = rt.all_reduce_sum(torch.tensor([nats, float(count)], dtype=torch.float64, device=rt.device))
        nats, count = float(sums[0]), int(sums[1])
        return metrics_from(nats, count, count * bytes_per_token)

    return evaluate


def resolve_tokenizer(config: PretrainConfig, info: dict[str, Any]) -> Path | None:
    """The tokenizer dir to copy into checkpoints/final: --tokenizer, else what the shards record."""
    shards = Path(config.data)
    candidates = [config.tokenizer] if config.tokenizer else []
    tok = info.get("tokenizer")
    if isinstance(tok, dict):
        candidates += [tok.get("path"), tok.get("dir")]
    elif isinstance(tok, str):
        candidates.append(tok)
    candidates += [info.get("tokenizer_dir"), shards / "tokenizer"]
    try:
        manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
        candidates.append(manifest.get("inputs", {}).get("tokenizer", {}).get("path"))
    except (OSError, ValueError, AttributeError):
        pass
    for c in candidates:
        if c and (Path(c) / "tokenizer.json").is_file():
            # The model must ship the tokenizer its shards were made with (pack records its hash).
            expected = info.get("tokenizer_sha256")
            if expected and sha256_file(Path(c) / "tokenizer.json") != expected:
                if config.tokenizer:
                    raise UserError(f"--tokenizer {c}: not the tokenizer {shards} was packed with (sha256 differs)")
                continue
            return Path(c)
    if config.tokenizer:
        raise UserError(f"--tokenizer {config.tokenizer}: no tokenizer.json there")
    return None


def build_model(config: PretrainConfig, vocab_size: int, seq_len: int, special: dict[str, int | None]):
    """The model to train: the preset (+ overrides) from random init, or --init-from a model dir."""
    from llmchain.model.llama import Llama
    from llmchain.model.presets import preset_config

    if config.init_from:
        from llmchain.model.io import load_model

        model = load_model(config.init_from).train()
        if model.config.vocab_size < vocab_size:
            raise UserError(f"--init-from {config.init_from}: vocab {model.config.vocab_size} < the shards' "
                            f"vocab {vocab_size}")  # fmt: skip
        if config.dropout is not None:
            model.config.dropout = config.dropout
        return model.float()
    overrides = dict(config.model)
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    overrides.setdefault("max_position_embeddings", seq_len)
    overrides["max_position_embeddings"] = max(overrides["max_position_embeddings"], seq_len)
    overrides.update({k: v for k, v in special.items() if v is not None})
    try:
        model_config = preset_config(config.preset, vocab_size, **overrides)
    except TypeError as e:
        raise ConfigError(f"model: {e} (allowed: the fields of LlamaConfig, e.g. num_hidden_layers)") from None
    torch.manual_seed(config.seed)
    return Llama(model_config)


def _special_ids(tokenizer_dir: Path | None, info: dict[str, Any]) -> dict[str, int | None]:
    """bos/eos/pad ids for the model's config (generation stops at EOS): from the tokenizer, else shards.json."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": info.get("eos_token_id"), "pad_token_id": None}
    if tokenizer_dir is not None:
        from llmchain.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return ids


@dataclass
class PretrainResult:
    run_dir: Path
    fit: FitResult
    final: Path | None  # RUN/final when the run completed
    params: int
    seq_len: int
    tokenizer: Path | None


def run_pretrain(config: PretrainConfig, quiet: bool = False) -> PretrainResult:
    """Train as `config` says; write RUN/{config.yaml, metrics.jsonl, tb/, loss.png, checkpoints/, final/}.

    Works alone or under torchrun (every process calls it). UserError/ConfigError for bad inputs.
    """
    from llmchain.model.io import save_model

    shards = Path(config.data)
    info = read_shards(shards)
    vocab = info.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise UserError(f"{shards / 'shards.json'}: field 'vocab_size' missing or not a positive integer")
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a directory")
    if config.resume in (None, "", "never", "none") and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already has checkpoints; pass --resume auto to continue it, or choose "
                          "another --out")  # fmt: skip
    tokenizer_dir = resolve_tokenizer(config, info)
    from llmchain.model.presets import PRESETS

    if config.preset not in PRESETS and not config.init_from:
        raise ConfigError(f"unknown preset {config.preset!r}; choose one of: {', '.join(PRESETS)}")
    context = (PRESETS[config.preset].max_position_embeddings if not config.init_from else 1 << 30)
    seq_len = config.seq_len or min(512, config.model.get("max_position_embeddings", context))
    model = build_model(config, vocab, seq_len, _special_ids(tokenizer_dir, info))
    if seq_len > model.config.max_position_embeddings:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's context ({model.config.max_position_embeddings})")

    rt = setup_runtime(config.device, config.precision, config.threads)
    rows = config.batch_size * config.grad_accum
    batches = TokenShards(shards, "train", seq_len, rows, config.seed)
    val = split_info(info, "val")
    bpt = (val.get("bytes") or 0) / val["tokens"] if val.get("tokens") else float("nan")
    eval_fn = val_eval_fn(shards, seq_len, config.batch_size, config.eval_batches * config.batch_size, bpt)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        if not quiet:
            tokens_per_step = rows * seq_len * rt.world_size
            print(f"pretrain: {model.num_params() / 1e6:.2f}M parameters, {rt.world_size} process(es) on "
                  f"{rt.device.type}, {tokens_per_step:,} tokens/step of {seq_len}-token sequences"
                  + ("" if eval_fn else " (no val split: no eval)"))  # fmt: skip

    def save_fn(m: torch.nn.Module, directory: Path) -> None:
        save_model(m, directory, tokenizer_dir=tokenizer_dir, manifest={"kind": "checkpoint"})

    model_config = model.config

    def factory() -> torch.nn.Module:
        from llmchain.model.llama import Llama

        return Llama(model_config)

    result = fit(model, batches, config, run_dir, eval_fn=eval_fn, save_fn=save_fn, model_factory=factory,
                 flops_per_token=model.flops_per_token(seq_len), quiet=quiet)  # fmt: skip
    final = None
    if result.completed and rt.is_main:
        inputs = {"shards": shards} | ({"tokenizer": tokenizer_dir} if tokenizer_dir else {})
        evals = {k: v for k, v in result.eval.items() if isinstance(v, float) and math.isfinite(v)}
        manifest = {"kind": "model", "inputs": inputs, "config": config, "eval": evals,
                    "counts": {"steps": result.step, "tokens": result.tokens},
                    "hardware": describe_hardware(rt), "train_seconds": round(result.elapsed_s, 1)}  # fmt: skip
        final = save_model(result.model, run_dir / "final", tokenizer_dir=tokenizer_dir, manifest=manifest)
    rt.barrier()
    return PretrainResult(run_dir, result, final, model.num_params(), seq_len, tokenizer_dir)


def pretrain(config: PretrainConfig, quiet: bool = False) -> Path:
    """Pretrain and return the run dir (the model is in RUN/final). KeyboardInterrupt when a signal
    stopped the run (after checkpointing: `resume="auto"` continues it)."""
    try:
        result = run_pretrain(config, quiet=quiet)
    finally:
        teardown_runtime()
    if not result.fit.completed:
        raise KeyboardInterrupt
    return result.run_dir
