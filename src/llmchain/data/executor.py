"""Running shard tasks: in-process, on a local process pool, or as Ray tasks.

A task is a module-level function plus a payload of plain JSON values (shard ranges, step specs,
paths); nothing user-defined is pickled, so a Ray cluster or a spawned worker rebuilds everything
from importable code. Results come back in completion order; the caller orders them by shard index,
so the output never depends on scheduling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from llmchain.errors import ConfigError

Task = Callable[[dict[str, Any]], dict[str, Any]]


class Executor:
    """Runs `task(payload)` for every payload; `map` yields results as they finish."""

    name = "executor"

    def map(self, task: Task, payloads: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """`workers` processes (spawned, so no state is inherited by fork); 1 worker runs in-process."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, task: Task, payloads: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.workers == 1 or len(payloads) <= 1:
            for p in payloads:
                yield task(p)
            return
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        pending = {self._pool.submit(task, p) for p in payloads}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """The same tasks as Ray tasks: on an existing cluster (`address`), or a local Ray started here
    with `workers` CPUs and shut down at the end."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'ray[default]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            # workers import llmchain from the same source tree as the driver
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}}
            ray.init(**kwargs)
            self._started = True
        self._remote: dict[Task, Any] = {}

    def map(self, task: Task, payloads: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        ray = self._ray
        if task not in self._remote:
            self._remote[task] = ray.remote(num_cpus=1, max_retries=2)(task)
        remote = self._remote[task]
        pending = [remote.remote(p) for p in payloads]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, workers: int, ray_address: str | None = None) -> Executor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, ray_address)
    raise ConfigError(f"unknown executor {kind!r} (use local or ray)")
