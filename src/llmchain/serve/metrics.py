"""Prometheus metrics of the server, in the text exposition format, named after vLLM's.

Names are vLLM's (`time_to_first_token_seconds`, `num_requests_running`, ...) with our own
`llmchain:` prefix, so a vLLM dashboard needs only the prefix changed. Written by hand (a few
counters and histograms) rather than pulling in prometheus_client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

PREFIX = "llmchain:"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
FINISH_REASONS = ("stop", "length", "abort")


def label_value(text: str) -> str:
    """`text` as a Prometheus label value: a quote, backslash or newline in a model's name would
    otherwise end the label early and break (or forge lines of) the whole page."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]):
        self.name, self.doc, self.buckets = PREFIX + name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def render(self, labels: str) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{self.name}_bucket{{{labels},le="{b}"}} {acc}')
        acc += self.counts[-1]
        out += [f'{self.name}_bucket{{{labels},le="+Inf"}} {acc}', f"{self.name}_sum{{{labels}}} {self.sum}",
                f"{self.name}_count{{{labels}}} {acc}"]  # fmt: skip
        return out


class ServeMetrics:
    """Counters and histograms fed by the engine thread; gauges read from the engine at scrape time."""

    def __init__(self, model_name: str):
        self.labels = f'model_name="{label_value(model_name)}"'
        self.lock = threading.Lock()
        self.ttft = Histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              LATENCY_BUCKETS)  # fmt: skip
        self.itl = Histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             LATENCY_BUCKETS)  # fmt: skip
        self.e2e = Histogram("e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                             REQUEST_BUCKETS)  # fmt: skip
        self.queue = Histogram("request_queue_time_seconds", "Histogram of time spent waiting in the queue.",
                               REQUEST_BUCKETS)  # fmt: skip
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)
        self.gauges: Callable[[], dict[str, float]] = dict
        # question answering (`serve --index`) and /v1/embeddings
        self.retrieval = Histogram("retrieval_latency_seconds",
                                   "Histogram of passage retrieval time per chat request in seconds.",
                                   LATENCY_BUCKETS)  # fmt: skip
        self.citations = 0
        self.citations_dropped = 0
        self.embedding_inputs = 0
        self.embedding_inputs_truncated = 0

    def on_retrieval(self, seconds: float) -> None:
        with self.lock:
            self.retrieval.observe(seconds)

    def on_citations(self, kept: int, dropped: int) -> None:
        with self.lock:
            self.citations += kept
            self.citations_dropped += dropped

    def on_embedded(self, n_inputs: int, n_truncated: int = 0) -> None:
        with self.lock:
            self.embedding_inputs += n_inputs
            self.embedding_inputs_truncated += n_truncated

    # engine hooks (called from the engine thread)
    def on_admitted(self, queue_time: float, prompt_tokens: int) -> None:
        with self.lock:
            self.queue.observe(queue_time)
            self.prompt_tokens += prompt_tokens

    def on_first_token(self, ttft: float) -> None:
        with self.lock:
            self.ttft.observe(ttft)
            self.generation_tokens += 1

    def on_token(self, itl: float | None) -> None:
        with self.lock:
            if itl is not None:
                self.itl.observe(itl)
            self.generation_tokens += 1

    def on_seq_finished(self, reason: str) -> None:
        with self.lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def on_request_finished(self, e2e: float) -> None:
        with self.lock:
            self.e2e.observe(e2e)

    def render(self) -> str:
        """The /metrics page (Prometheus text format 0.0.4)."""
        L = self.labels
        lines: list[str] = []
        docs = {
            "num_requests_running": "Number of requests currently running (decoding).",
            "num_requests_waiting": "Number of requests waiting to be admitted.",
            "kv_cache_usage_perc": "KV-cache usage: fraction of sequence slots in use (1 = full).",
            "kv_slots_used": "KV-cache sequence slots in use.",
            "kv_slots_total": "KV-cache sequence slots (max batch size).",
        }
        for name, value in self.gauges().items():
            lines += [f"# HELP {PREFIX}{name} {docs.get(name, name)}", f"# TYPE {PREFIX}{name} gauge",
                      f"{PREFIX}{name}{{{L}}} {value}"]  # fmt: skip
        with self.lock:
            for name, value, doc in (
                ("prompt_tokens_total", self.prompt_tokens, "Number of prefill tokens processed."),
                ("generation_tokens_total", self.generation_tokens, "Number of generation tokens processed."),
                ("citations_total", self.citations, "Citations sent (each quotes its source exactly)."),
                ("citations_dropped_total", self.citations_dropped,
                 "Citations an answer made whose passage did not quote its source exactly (not sent)."),
                ("embedding_inputs_total", self.embedding_inputs, "Texts embedded by /v1/embeddings."),
                ("embedding_inputs_truncated_total", self.embedding_inputs_truncated,
                 "Texts /v1/embeddings cut to the encoder's limit before embedding them."),
            ):
                lines += [f"# HELP {PREFIX}{name} {doc}", f"# TYPE {PREFIX}{name} counter",
                          f"{PREFIX}{name}{{{L}}} {value}"]  # fmt: skip
            name = PREFIX + "request_success_total"
            lines += [f"# HELP {name} Count of finished sequences by finish reason.", f"# TYPE {name} counter"]
            lines += [f'{name}{{{L},finished_reason="{r}"}} {c}' for r, c in self.finished.items()]
            for h in (self.ttft, self.itl, self.e2e, self.queue, self.retrieval):
                lines += h.render(L)
        return "\n".join(lines) + "\n"
