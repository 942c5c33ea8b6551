"""What the fused decode step's weight formats cost in quality: perplexity on tinyshakespeare's validation
split (its last 10 %, nanoGPT's split) of a trained model, through the engine's own decode step.

The text's tokens are cut into windows of `--seq-len`; all windows are decoded together, one token per
window per step, from position 0, each next token scored (teacher forcing) — exactly the computation the
engine runs when it generates, for `--weights` float32, bfloat16 and int8. The model's own forward
(PyTorch, fp32, whole windows at once) is the reference row.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/decode_quality.py --model runs/.../final
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def val_windows(model_dir: Path, text_file: Path, seq_len: int, max_windows: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    text = text_file.read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9) :]
    ids = AutoTokenizer.from_pretrained(model_dir)(val, add_special_tokens=False, verbose=False)["input_ids"]
    n = min(len(ids) // seq_len, max_windows)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.inference_mode()
def nll_decode(model, windows: torch.Tensor, weights: str, threads: int) -> float:
    """Mean next-token NLL (nats) of the windows, decoded one position at a time by the fused step."""
    from llmchain.infer.decoder import load_decoder
    from llmchain.infer.forward import KVCache, prepare_decode

    n, T = windows.shape
    w = prepare_decode(model, T)
    cache = KVCache(model.config, n, T)
    dec = load_decoder(w, cache, weights, threads)
    if dec is None:
        raise SystemExit("the fused decode step cannot be built here (no C compiler?)")
    slots, total = torch.arange(n), 0.0
    for t in range(T - 1):
        logits = dec.step(windows[:, t], torch.full((n,), t), slots)
        total += float(F.cross_entropy(logits, windows[:, t + 1], reduction="sum"))
    return total / (n * (T - 1))


@torch.inference_mode()
def nll_forward(model, windows: torch.Tensor) -> float:
    logits, _ = model(windows)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained model dir (HF format, with tokenizer)")
    ap.add_argument("--text", type=Path, default=CORPUS)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from llmchain.model.io import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    seq_len = min(args.seq_len, model.config.max_position_embeddings)
    windows = val_windows(args.model, args.text, seq_len, args.max_windows)
    print(f"model {args.model}: {model.num_params() / 1e6:.2f}M params; {windows.numel():,} validation tokens "
          f"({windows.shape[0]} windows of {seq_len})")  # fmt: skip
    ref = nll_forward(model, windows)
    print("| path | perplexity | Δ vs the model's forward | time (s) |\n|---|---:|---:|---:|")
    print(f"| model forward (PyTorch fp32) | {math.exp(ref):.4f} | — | — |")
    for weights in ("float32", "bfloat16", "int8"):
        t = time.perf_counter()
        nll = nll_decode(model, windows, weights, args.threads)
        print(f"| fused decode step, {weights} weights | {math.exp(nll):.4f} | {math.exp(nll) - math.exp(ref):+.4f} "
              f"({(math.exp(nll - ref) - 1) * 100:+.2f} %) | {time.perf_counter() - t:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
