"""Supervised fine-tuning (chat / instruction following) of our decoder: full or LoRA, through the shared loop.

    result = finetune_sft(SFTConfig(model="runs/base/final", data="chat.jsonl", out="runs/sft", lora=True))

Examples are rendered with the model dir's chat template and trained with loss on the assistant
tokens only (`chat_data.tokenize_example`). Without packing each row is one example, rows of similar
length are batched together and padded at the right (causal attention: padding after a sequence
cannot affect it). With `pack=True` several examples share a row; each keeps its own positions
(RoPE restarts at 0) and a block-diagonal causal mask stops attention at example boundaries, so a
packed row trains exactly like its examples trained one by one.

LoRA goes through PEFT (`get_peft_model` works on our `Llama` because its module names are HF's).
Outputs: `RUN/adapter/` (PEFT format: adapter_config.json + adapter_model.safetensors) and, with
`merge`, `RUN/final/` — a plain HF model dir with tokenizer files that `serve`, `generate` and
transformers open. A full fine-tune writes `RUN/final/` only. After every eval a few validation
prompts are answered greedily and written to `RUN/samples/step-N.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmchain.artifacts import atomic_dir, atomic_write_text, write_manifest
from llmchain.config import SFTConfig
from llmchain.errors import UserError
from llmchain.model.llama import Llama
from llmchain.train.chat_data import (
    Encoded,
    check_chat_template,
    encode_examples,
    pack,
    read_chat_data,
    render,
)


class SFTModel(nn.Module):
    """The module the loop trains: our Llama (or a PEFT-wrapped one) + the SFT loss, packed or not.

    Wrapping the whole forward in one module keeps DDP correct: the packed path installs its attention
    mask around the model's forward, and DDP only sees forwards that go through the module it wraps.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def llama(self) -> Llama:
        """Our Llama itself (with LoRA layers injected when PEFT-wrapped)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Mean cross-entropy over the target tokens (-100: no loss)."""
        if doc_ids is None:
            return self.llama(input_ids, targets=targets)[1]
        with block_diagonal_attention(self.llama, doc_ids):
            return self.llama(input_ids, targets=targets, positions=positions)[1]

    def flops_per_token(self, seq_len: int) -> float:
        return self.llama.flops_per_token(seq_len)


_MASK_ARG = 3  # LlamaAttention.forward(x, cos, sin, mask)


@contextlib.contextmanager
def block_diagonal_attention(model: Llama, doc_ids: torch.Tensor) -> Iterator[None]:
    """Within the block, token i of a row attends to token j iff doc_ids match and j ≤ i.

    Rows that hold several examples (packing) then compute exactly what each example computes alone
    (given positions that restart at 0 per example). Done with forward pre-hooks that hand each
    attention layer the mask, so the model's own forward (RoPE, layers, head, loss) runs unchanged.
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    mask = ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]  # (B, 1, T, T) over heads

    def hook(module, args, kwargs):
        if len(args) > _MASK_ARG:
            args = (*args[:_MASK_ARG], mask, *args[_MASK_ARG + 1 :])
        else:
            kwargs = {**kwargs, "mask": mask}
        return args, kwargs

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- batches -----------------------------------------------------------------------------------------


def rows_to_batch(enc: Encoded, rows: list[list[int]], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Tensors for rows of example indices: input_ids, targets (+ positions, doc_ids when packed).

    A token's target is the next token of the same example when that token is an assistant token,
    else -100; the last token of each example has no target (nothing of the next example is predicted).
    """
    width = max(sum(len(enc.ids[i]) for i in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    tgt = torch.full((B, width), -100, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    doc = torch.full((B, width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for d, i in enumerate(row):
            x, m = enc.ids[i], enc.masks[i]
            n = len(x)
            ids[b, at : at + n] = torch.tensor(x)
            nxt = torch.tensor(x[1:] + [-100])
            keep = torch.tensor(m[1:] + [False])
            tgt[b, at : at + n] = torch.where(keep, nxt, torch.full_like(nxt, -100))
            pos[b, at : at + n] = torch.arange(n)
            doc[b, at : at + n] = d
            at += n
    batch = {"input_ids": ids, "targets": tgt}
    if packed:
        batch.update(positions=pos, doc_ids=doc)
    return batch


class SFTBatches:
    """Training batches, a pure function of (seed, step, rank): rows shuffled per epoch, similar lengths
    batched together (pools of 50 batches sorted by length, then the batches shuffled)."""

    def __init__(self, enc: Encoded, rows: list[list[int]], batch_size: int, seed: int, pad_id: int, packed: bool):
        self.enc, self.rows, self.batch_size, self.seed, self.pad_id, self.packed = enc, rows, batch_size, seed, \
            pad_id, packed
        self.steps_per_epoch = max(1, math.ceil(len(rows) / batch_size))
        self._plan: tuple[int, list[list[int]]] | None = None

    def _row_len(self, r: int) -> int:
        return sum(len(self.enc.ids[i]) for i in self.rows[r])

    def plan(self, epoch: int) -> list[list[int]]:
        if self._plan is None or self._plan[0] != epoch:
            rng = random.Random(self.seed * 100_003 + epoch)
            order = list(range(len(self.rows)))
            rng.shuffle(order)
            need = self.steps_per_epoch * self.batch_size
            order = (order * (need // len(order) + 1))[:need]  # whole batches, every row at least once
            span = 50 * self.batch_size
            batches: list[list[int]] = []
            for s in range(0, len(order), span):
                chunk = sorted(order[s : s + span], key=self._row_len)
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)
            self._plan = (epoch, batches)
        return self._plan[1]

    def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        rows = self.plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
        per = math.ceil(len(rows) / world_size)
        mine = (rows * world_size)[rank * per : (rank + 1) * per]
        return rows_to_batch(self.enc, [self.rows[r] for r in mine], self.pad_id, self.packed)


# --- eval: validation loss + sample generations -----------------------------------------------------


@dataclass
class SFTEvaluator:
    """The loop's eval_fn: exact token-mean val loss over the held-out examples, then sample replies."""

    run_dir: Path
    enc: Encoded
    examples: list[list[dict[str, str]]]  # the val examples (messages), for the sample prompts
    tokenizer: Any
    cfg: SFTConfig
    pad_id: int
    stop_ids: list[int]
    clock: dict[str, int] = field(default_factory=lambda: {"step": 0})

    def __call__(self, model: nn.Module, rt) -> dict[str, float]:
        from llmchain.train.distributed import is_fsdp, unwrap

        order = sorted(range(len(self.enc.ids)), key=lambda i: len(self.enc.ids[i]))
        batches = [order[i : i + self.cfg.batch_size] for i in range(0, len(order), self.cfg.batch_size)]
        total = torch.zeros(2, dtype=torch.float64, device=rt.device)
        for batch_rows in batches[rt.rank :: rt.world_size]:
            b = rows_to_batch(self.enc, [[i] for i in batch_rows], self.pad_id, packed=False)
            inner = unwrap(model).llama
            logits, _ = inner(b["input_ids"].to(rt.device))
            t = b["targets"].to(rt.device)
            total[0] += F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100,
                                        reduction="sum").double()  # fmt: skip
            total[1] += (t != -100).sum()
        total = rt.all_reduce_sum(total)
        metrics = {"loss": float(total[0] / total[1].clamp(min=1))}
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50))
        if rt.is_main and self.cfg.samples and not is_fsdp(model):
            self.write_samples(unwrap(model).llama, rt.device)
        return metrics

    @torch.no_grad()
    def write_samples(self, model: Llama, device: torch.device) -> Path:
        """Greedy replies to the first `samples` val prompts → RUN/samples/step-N.jsonl, generated by the
        inference engine (the one way llmchain generates) over the weights as they are now, LoRA included."""
        from llmchain.infer.engine import Engine
        from llmchain.infer.sampling import SamplingParams

        limit = model.config.max_position_embeddings
        chats, prompts = [], []
        for messages in self.examples[: self.cfg.samples]:
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = render(self.tokenizer, messages[:last], add_generation_prompt=True)
            chats.append((messages, last))
            prompts.append(self.tokenizer(prompt, add_special_tokens=False)["input_ids"][-(limit - 8):])
        replies = []
        if prompts:  # fp32 and PyTorch's threads: samples of a training run, not a batch-invariant server
            engine = Engine(model, self.tokenizer, max_batch_size=len(prompts), dtype="float32", threads=None,
                            eos_token_ids=self.stop_ids)  # fmt: skip
            replies = [c.text for (c,) in engine.generate(prompts, SamplingParams(max_tokens=self.cfg.sample_tokens,
                                                                                  temperature=0))]  # fmt: skip
        out = [{"step": self.clock["step"], "prompt": messages[last - 1]["content"] if last else "",
                "reference": messages[last]["content"], "generation": reply}
               for (messages, last), reply in zip(chats, replies, strict=True)]  # fmt: skip
        path = self.run_dir / "samples" / f"step-{self.clock['step']}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
        return path


@dataclass
class BestWeights:
    """The val loss of every eval: the trainable weights at the lowest one (with `keep`) and the evals since
    it (early stopping after `patience` of them). Small data is memorised within a few epochs: its val loss
    falls, then rises while the training loss keeps falling, and the last step's weights are not the best."""

    lm: nn.Module
    keep: bool
    patience: int
    clock: dict[str, int]
    best_loss: float = math.inf
    best_step: int | None = None
    since_best: int = 0
    stopped: bool = False  # should_stop said so (the loop stops when it does)
    weights: dict[str, torch.Tensor] | None = None

    def update(self, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss")
        if loss is None:
            return
        if loss < self.best_loss - 1e-9:
            self.best_loss, self.best_step, self.since_best = loss, self.clock["step"], 0
            if self.keep:  # a copy on the CPU: the weights being trained keep changing on the device
                self.weights = {n: p.detach().to("cpu", copy=True) for n, p in self.lm.named_parameters()
                                if p.requires_grad}  # fmt: skip
        else:
            self.since_best += 1

    def should_stop(self, _metrics: dict[str, float]) -> bool:
        self.stopped = bool(self.patience) and self.since_best >= self.patience
        return self.stopped

    @torch.no_grad()
    def restore(self, lm: nn.Module) -> bool:
        """Put the best eval's weights back into `lm` (the same module, after training); False: none kept."""
        if self.weights is None:
            return False
        params = dict(lm.named_parameters())
        for name, w in self.weights.items():
            params[name].copy_(w.to(params[name].device))
        return True


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    run_dir: Path
    final: Path | None  # the HF model dir (full fine-tune, or LoRA merged)
    adapter: Path | None  # LoRA: the PEFT adapter dir
    fit: Any  # llmchain.train.loop.FitResult
    counts: dict[str, Any]


def add_lora(model: Llama, cfg: SFTConfig, base_dir: Path) -> nn.Module:
    """Wrap `model` with PEFT LoRA adapters on `cfg.lora_targets` (the base weights are frozen)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in present]
    if missing:
        raise UserError(f"--lora-targets {missing} are not modules of this model (it has e.g. q_proj, v_proj, "
                        "gate_proj, down_proj)")
    torch.manual_seed(cfg.seed)  # adapter init is part of the run's determinism
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets))
    peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())  # PEFT resets it
    return peft_model


def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    k = max(1, round(len(examples) * fraction))
    held = set(idx[:k])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def finetune_sft(cfg: SFTConfig, *, quiet: bool = False) -> SFTResult:
    """Run SFT as `cfg` says; returns where the outputs went and the counts.

    Raises UserError for a bad model dir, a tokenizer without chat template, unreadable data or no
    example that fits `seq_len`.
    """
    from llmchain.model.io import load_model, save_model
    from llmchain.tokenizer import load_tokenizer
    from llmchain.train import checkpoint as ckpt
    from llmchain.train.loop import fit

    t0 = time.perf_counter()
    base_dir, run_dir = Path(cfg.model), Path(cfg.out)
    model = load_model(base_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(base_dir)
    check_chat_template(tokenizer, str(base_dir))
    seq_len = min(cfg.seq_len, model.config.max_position_embeddings)
    data = read_chat_data(cfg.data, cfg.format, cfg.system_prompt, cfg.strict)
    if cfg.val_data:
        val_data = read_chat_data(cfg.val_data, cfg.format, cfg.system_prompt, cfg.strict)
        train_ex, val_ex, rejected = data.examples, val_data.examples, data.rejected + val_data.rejected
    else:
        train_ex, val_ex = _split(data.examples, cfg.val_fraction, cfg.seed)
        rejected = data.rejected
    train = encode_examples(tokenizer, train_ex, seq_len, cfg.too_long)
    val = encode_examples(tokenizer, val_ex, seq_len, cfg.too_long)
    if not train.ids:
        raise UserError(f"{cfg.data}: no training example fits --seq-len {seq_len} (all {train.dropped} dropped)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    lengths = [len(x) for x in train.ids]
    rows = pack(lengths, seq_len) if cfg.pack else [[i] for i in range(len(lengths))]
    source = SFTBatches(train, rows, cfg.batch_size * cfg.grad_accum, cfg.seed, pad_id, cfg.pack)
    spe = source.steps_per_epoch
    # Given epochs, max_time only caps the run (a recipe's budget share must not turn "3 epochs" into "train
    # until the time is up"); with max_time and no epochs, the time budget sets the run's length.
    by_time = cfg.max_time and "epochs" not in cfg.model_fields_set
    max_steps = cfg.max_steps or (None if by_time else max(1, math.ceil(cfg.epochs * spe)))
    total = max_steps or spe
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.03 * total)
    loop_cfg = cfg.model_copy(update={"max_steps": max_steps, "warmup_steps": warmup,
                                      "eval_every": cfg.eval_every or spe, "save_every": cfg.save_every or spe})

    if cfg.keep_best and cfg.strategy == "fsdp":
        raise UserError("keep_best is not supported with --strategy fsdp (the weights are sharded)")
    lm: nn.Module = add_lora(model, cfg, base_dir) if cfg.lora else model
    wrapper = SFTModel(lm)
    stop_ids = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
                       if isinstance(i, int) and i != tokenizer.unk_token_id})  # fmt: skip
    evaluator = SFTEvaluator(run_dir, val, [val_ex[i] for i in val.source_index], tokenizer, cfg, pad_id, stop_ids)
    best = BestWeights(lm, cfg.keep_best, cfg.patience, evaluator.clock)

    def eval_fn(m: nn.Module, rt) -> dict[str, float]:
        metrics = evaluator(m, rt)
        best.update(metrics)
        return metrics

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if rejected:
        atomic_write_text(run_dir / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected))

    class _Clocked:  # tells the evaluator which step it is scoring (for samples/step-N.jsonl)
        def get_batch(self, step: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
            evaluator.clock["step"] = step + 1
            return source.get_batch(step, rank, world_size)

    result = fit(
        wrapper, _Clocked(), loop_cfg, run_dir, loss_fn=lambda m, b: m(**b),
        eval_fn=eval_fn if val.ids else None,
        save_fn=lambda m, d: _save_lm(m.lm, d), load_fn=lambda m, d: ckpt.default_load(m.lm, d),
        quiet=quiet, should_stop=best.should_stop if cfg.patience else None,
    )  # fmt: skip
    trained = result.model.lm if result.model is not None else lm
    restored = result.completed and best.restore(trained)
    counts = {
        "format": data.format, "train_examples": len(train.ids), "val_examples": len(val.ids),
        "rows": len(rows), "train_tokens": train.tokens, "loss_tokens": train.loss_tokens,
        "truncated": train.truncated + val.truncated, "dropped_too_long": train.dropped + val.dropped,
        "rejected": len(rejected), "steps": result.step, "epochs_run": round(result.step / spe, 3),
        "trainable_params": sum(p.numel() for p in wrapper.parameters() if p.requires_grad),
        "best_step": best.best_step, "best_val_loss": None if best.best_step is None else round(best.best_loss, 4),
        "final_is_best": restored or best.best_step == result.step,
        "early_stopped": best.stopped,
    }  # fmt: skip
    final = adapter = None
    if result.completed:
        val = {"loss": best.best_loss, "perplexity": math.exp(min(best.best_loss, 50)), "step": best.best_step} \
            if restored else result.eval  # fmt: skip
        final, adapter = _save_outputs(trained, cfg, base_dir, run_dir, counts, val, save_model)
    counts["wall_s"] = round(time.perf_counter() - t0, 1)
    write_manifest(run_dir, "sft-run", inputs={"base_model": base_dir, "data": cfg.data}, config=cfg,
                   counts={**counts, "val": result.eval}, hash_inputs=False)  # fmt: skip
    return SFTResult(run_dir, final, adapter, result, counts)


def _save_lm(lm: nn.Module, directory: Path) -> None:
    """A checkpoint's model part: the PEFT adapter alone, or the full model (the loop's default)."""
    from llmchain.train import checkpoint as ckpt

    if hasattr(lm, "peft_config"):
        # PEFT would otherwise open the base config.json with transformers' config class to compare vocab
        # sizes (our LlamaConfig is not one); our runs never resize the embeddings.
        lm.save_pretrained(directory, save_embedding_layers=False)
    else:
        ckpt.default_save(lm, directory)


def _save_outputs(lm: nn.Module, cfg: SFTConfig, base_dir: Path, run_dir: Path, counts: dict, val: dict, save_model
                  ) -> tuple[Path | None, Path | None]:  # fmt: skip
    from llmchain.artifacts import write_manifest as manifest_write

    manifest = {"kind": "model", "inputs": {"base_model": base_dir, "data": cfg.data}, "config": cfg,
                "counts": {k: v for k, v in counts.items() if isinstance(v, int)}, "sft_val": val}
    final = adapter = None
    if cfg.lora:
        adapter = run_dir / "adapter"
        with atomic_dir(adapter) as tmp:
            _save_lm(lm, tmp)
            manifest_write(tmp, "lora-adapter", inputs={"base_model": base_dir, "data": cfg.data}, config=cfg,
                           counts=manifest["counts"])  # fmt: skip
        if cfg.merge:
            merged = lm.merge_and_unload()
            final = save_model(merged, run_dir / "final", tokenizer_dir=base_dir, manifest=manifest,
                               generation=_generation(merged, base_dir))  # fmt: skip
    else:
        final = save_model(lm, run_dir / "final", tokenizer_dir=base_dir, manifest=manifest,
                           generation=_generation(lm, base_dir))  # fmt: skip
    return final, adapter


def _generation(model: Llama, base_dir: Path) -> dict:
    """generation_config: stop at the end of an assistant turn as well as at end-of-text."""
    from llmchain.tokenizer import load_tokenizer

    tok = load_tokenizer(base_dir)
    ids = [i for i in (model.config.eos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
           if isinstance(i, int) and i != tok.unk_token_id]  # fmt: skip
    return {"eos_token_id": sorted(set(ids))} if ids else {}
