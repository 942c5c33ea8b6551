"""Training-step throughput: our Llama vs `transformers.LlamaForCausalLM`, same config, weights and batch.

One step = forward + loss + backward + AdamW. Rows: {ours, HF} × {fp32, bf16 autocast} × {eager,
torch.compile}. Reports tokens/s, ms/step, MFU against the *measured* matmul peak of this machine
(a 2048² matmul in the row's precision, best of runs at the start and at the end, on the same thread
count), MFU against the reference peak quoted in the pretraining issue (149 GFLOP/s fp32, 367 GFLOP/s
bf16, measured there on an older torch) and our speed-up over HF at identical settings.

The variants run interleaved — one timed block of steps per variant per round, rounds repeated —
and each variant reports its median block, so a busy shared machine slows all of them alike.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --preset small --batch 4 --seq 512 --no-compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of this process)
# The matmul peak the pretraining issue quoted for its machine (2048² matmul), FLOP/s. Today's torch
# runs bf16 matmuls on AMX several times faster than that, so MFU is shown against both peaks.
ISSUE_PEAK = {"fp32": 149e9, "bf16": 367e9}


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    """Best-of FLOP/s of an n×n matmul in `dtype` on this CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = CLOCK()
        a @ b
        best = min(best, CLOCK() - t)
    return 2 * n**3 / best


class Variant:
    """One model + optimizer + precision + compile setting, stepping on a fixed batch."""

    def __init__(self, name, model, precision, compiled, x, y, hf: bool):
        self.name, self.precision, self.compiled, self.hf = name, precision, compiled, hf
        self.model = model.train()
        self.step_fn = torch.compile(model) if compiled else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
        self.x, self.y = x, y
        self.times: list[float] = []
        self.first_loss: float | None = None

    def step(self) -> float:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            if self.hf:
                loss = self.step_fn(input_ids=self.x, labels=self.x).loss  # HF shifts the labels itself
            else:
                loss = self.step_fn(self.x, self.y)[1]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def run_block(self, steps: int) -> None:
        t = CLOCK()
        for _ in range(steps):
            self.step()
        self.times.append((CLOCK() - t) / steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset (tiny: d=256, 6 layers, ~6M params)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="timed blocks per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compile happens here)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--only", default="", help="comma list of variant names to run, e.g. ours-bf16,hf-fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: CPU time of this process — steadier on a busy machine; use with --threads 1")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time

    import transformers

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama
    from llmchain.model.presets import preset_config

    transformers.logging.set_verbosity_error()
    cfg = preset_config(args.preset, args.vocab_size, tie_word_embeddings=False)
    torch.manual_seed(0)
    x = torch.randint(0, args.vocab_size, (args.batch, args.seq + 1))
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    tokens = args.batch * args.seq

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    threads = torch.get_num_threads()
    variants: list[Variant] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_model(Llama(cfg), tmp)  # the HF model gets exactly our initial weights
        for compiled in [False] + ([] if args.no_compile else [True]):
            for precision in ("fp32", "bf16"):
                for impl in ("hf", "ours"):
                    name = f"{impl}-{precision}" + ("-compile" if compiled else "")
                    if args.only and name not in args.only.split(","):
                        continue
                    if impl == "hf":
                        model = transformers.LlamaForCausalLM.from_pretrained(
                            tmp, dtype=torch.float32, attn_implementation="sdpa"
                        )
                    else:
                        from llmchain.model.io import load_model

                        model = load_model(tmp, dtype=torch.float32)
                    variants.append(Variant(name, model, precision, compiled, x, y, hf=impl == "hf"))

    flops_per_token = _flops(cfg, args.seq)
    print(f"model: preset {args.preset}, {cfg.num_params() / 1e6:.1f}M params, vocab {args.vocab_size}, "
          f"batch {args.batch} × seq {args.seq} = {tokens} tokens/step; {torch.get_num_threads()} threads, {args.clock} clock")  # fmt: skip
    for v in variants:
        t = time.perf_counter()
        v.first_loss = v.step()
        for _ in range(args.warmup - 1):
            v.step()
        print(f"  warm-up {v.name}: first loss {v.first_loss:.4f}, {time.perf_counter() - t:.1f}s")
    for _ in range(args.rounds):
        for v in variants:
            v.run_block(args.steps)
    # Again at the end: a matmul timed while another process held a core would understate the peak.
    peaks = {k: max(peaks[k], matmul_peak(d)) for k, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"measured matmul peak ({threads} threads): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; issue's reference peak: fp32 "
          f"{ISSUE_PEAK['fp32'] / 1e9:.0f}, bf16 {ISSUE_PEAK['bf16'] / 1e9:.0f} GFLOP/s")  # fmt: skip

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"training step throughput ({args.preset}, {tokens} tokens/step)", title_justify="left"
    )
    cols = ("variant", "precision", "compile", "threads", "tokens/s", "ms/step", "MFU (measured peak)",
            "MFU (issue's peak)", "vs HF same settings")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    speed = {v.name: tokens / statistics.median(v.times) for v in variants}
    for v in variants:
        tps = speed[v.name]
        mfu = tps * flops_per_token / peaks[v.precision]
        mfu_issue = tps * flops_per_token / ISSUE_PEAK[v.precision]
        ref = v.name.replace("ours", "hf")
        rel = f"{tps / speed[ref]:.2f}×" if v.name.startswith("ours") and ref in speed else ""
        table.add_row(v.name, v.precision, "yes" if v.compiled else "no", str(threads), f"{tps:,.0f}",
                      f"{1000 * tokens / tps:.0f}", f"{100 * mfu:.1f}%", f"{100 * mfu_issue:.1f}%", rel)  # fmt: skip
    Console(width=140).print(table)
    if "ours-bf16" in speed and "hf-fp32" in speed:
        print(f"our default CPU path (bf16 autocast, eager) vs HF default (fp32, eager): "
              f"{speed['ours-bf16'] / speed['hf-fp32']:.2f}×")  # fmt: skip
    print(
        f"MFU = tokens/s × {flops_per_token / 1e6:.1f} MFLOP/token (6N + 12·L·H·Q·T) / matmul peak of the row's precision"
    )


def _flops(cfg, seq_len: int) -> float:
    from llmchain.model.llama import Llama

    with torch.device("meta"):
        return Llama(cfg).flops_per_token(seq_len)


if __name__ == "__main__":
    main()
