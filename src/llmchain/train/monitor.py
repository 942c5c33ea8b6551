"""What a run shows and records: a progress line, `metrics.jsonl`, TensorBoard events, a loss-curve PNG.

Only the main process (rank 0) creates a `Monitor`. One record per log interval: step, train loss, lr,
grad norm, tokens/s, MFU, elapsed; one per eval with the eval's metrics. On resume the records after
the resumed step are dropped (they belong to the abandoned part of the run), and TensorBoard purges
its events past that step, so the logs read as one run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_path, atomic_write_text

METRICS = "metrics.jsonl"
PLOT = "loss.png"


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Monitor:
    """Progress + metrics writer of one run (main process only)."""

    def __init__(self, run_dir: Path, start_step: int, total_steps: int | None, max_time: float | None,
                 tensorboard: bool = True, quiet: bool = False):
        self.run_dir = Path(run_dir)
        self.total_steps, self.max_time = total_steps, max_time
        self.quiet = quiet
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS
        self.records = self._truncate(start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step or None)
            except ImportError:  # tensorboard is optional at run time
                self.tb = None
        self._progress = None
        if not quiet and sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                transient=False,
            )  # fmt: skip
            # The bar counts steps, or seconds of the budget for a --max-time run.
            total = total_steps or max_time
            self._task = self._progress.add_task("train", total=total, completed=start_step if total_steps else 0,
                                                 stats=f"step {start_step}")  # fmt: skip
            self._progress.start()

    def _truncate(self, start_step: int) -> list[dict[str, Any]]:
        """Records up to `start_step` (the resumed run's past); rewrites the file when some are dropped."""
        if not self.path.is_file():
            return []
        records, dropped = [], False
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                dropped = True  # a line cut by a kill
                continue
            if rec.get("step", 0) <= start_step:
                records.append(rec)
            else:
                dropped = True
        if dropped:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        return records

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (a dict with "step") to metrics.jsonl and TensorBoard; update the display."""
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        if self.tb is not None:
            prefix = record.get("split", "train")
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
        self._show(record)

    def _show(self, r: dict[str, Any]) -> None:
        if self.quiet:
            return
        if r.get("split") == "val":
            parts = [f"step {r['step']}", "val"]
            parts += [f"{k} {v:.4f}" for k, v in r.items() if k not in ("step", "split") and isinstance(v, float)]
            self.print("  ".join(parts))
            return
        stats = f"loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['tokens_per_s']:,.0f} tok/s"
        if r.get("mfu") is not None:
            stats += f"  MFU {100 * r['mfu']:.1f}%"
        total = f"/{self.total_steps}" if self.total_steps else ""
        if self._progress is not None:
            done = r["step"] if self.total_steps else r["elapsed_s"]
            self._progress.update(self._task, completed=done, stats=f"step {r['step']}{total}  {stats}")
            return
        eta = r.get("eta_s")
        tail = f"  ETA {_fmt_time(eta)}" if eta is not None else ""
        self.print(f"step {r['step']}{total}  {stats}  elapsed {_fmt_time(r['elapsed_s'])}{tail}")

    def print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        elif not self.quiet:
            print(text, flush=True)

    def plot(self) -> Path | None:
        """Write RUN/loss.png (train and val loss against step); None when there is nothing to plot."""
        train = [(r["step"], r["loss"]) for r in self.records if r.get("split", "train") == "train" and "loss" in r]
        val = [(r["step"], r["loss"]) for r in self.records if r.get("split") == "val" and "loss" in r]
        if not train and not val:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="val", linewidth=1.5, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(self.run_dir.name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.run_dir / PLOT
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.tb is not None:
            self.tb.close()
        self._file.close()


class Throughput:
    """Tokens/s and ETA over the steps since the last log."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t, 1e-9)
        self.t, self.tokens = now, 0
        return rate
