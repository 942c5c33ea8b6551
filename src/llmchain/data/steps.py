"""The step protocol of the data pipeline, and the registry of built-in steps.

A step is a small class with a `name`, a `run(docs)` generator and counted `stats` (datatrove
style). Two helpers cover nearly every step:

- `Filter`: implement `filter(doc)` returning `True` (keep) or `(False, "reason")` (drop). The
  run loop counts docs in/out and removals per reason, and hands every dropped document to
  `on_reject`, so nothing disappears without a trace.
- `Mapper`: implement `apply(doc)` that rewrites `doc.text` (and may count what it changed).

Steps that need to see the whole corpus (exact and near dedup) are `GlobalStep`s: the executor
runs them after every shard has gone through the per-document steps.

To run steps in worker processes (or Ray tasks) no step object is pickled: a step is rebuilt in the
worker from `spec()` — its importable class name and the JSON arguments it was created with.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmchain.errors import ConfigError


@dataclass(slots=True)
class Document:
    """One document: `id` is stable across runs (source + line or record number)."""

    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}


@dataclass
class StepStats:
    """What one step did: docs in and out, removals per reason, and free-form counters."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    removed: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)

    def merge(self, other: dict[str, Any] | StepStats) -> None:
        if isinstance(other, StepStats):
            other = other.to_json()
        self.docs_in += other["in"]
        self.docs_out += other["out"]
        self.removed.update(other.get("removed", {}))
        self.counters.update(other.get("counters", {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.docs_in,
            "out": self.docs_out,
            "removed": dict(sorted(self.removed.items())),
            "counters": dict(sorted(self.counters.items())),
        }


RejectSink = Callable[[Document, str, str], None]


def _ignore_reject(doc: Document, step: str, reason: str) -> None:
    pass


class Step:
    """Base of every step. Subclasses set `name` and implement `run` (or use Filter / Mapper)."""

    name: str = "step"
    #: dedup steps see the whole corpus; the executor runs them after the per-document steps
    is_global: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Step:
        obj = super().__new__(cls)
        # remember the constructor arguments so a worker can rebuild the step without pickling it
        obj._init_args = (args, kwargs)
        return obj

    def __init__(self) -> None:
        self.stats = StepStats(self.name)
        self.on_reject: RejectSink = _ignore_reject

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Importable class path + JSON constructor arguments (how workers rebuild this step)."""
        args, kwargs = getattr(self, "_init_args", ((), {}))
        cls = type(self)
        spec = {"class": f"{cls.__module__}:{cls.__qualname__}", "args": list(args), "kwargs": kwargs}
        try:
            json.dumps(spec)
        except TypeError as e:
            raise ConfigError(f"step {self.name!r}: its constructor arguments must be JSON values ({e})") from None
        return spec


def step_from_spec(spec: dict[str, Any], allow_main: bool = False) -> Step:
    """Rebuild a step from `Step.spec()`; a class that cannot be imported is a ConfigError.

    `allow_main`: the step runs in this process, so classes defined in a notebook are fine.
    """
    module_name, _, qualname = spec["class"].partition(":")
    if module_name == "__main__" and not allow_main:
        raise ConfigError(
            f"step class {qualname} is defined in __main__ (a notebook or script); worker processes cannot "
            "import it — put it in a module, or run with workers=1"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import step class {spec['class']}: {e}") from None
    return obj(*spec.get("args", ()), **spec.get("kwargs", {}))


class Filter(Step):
    """A step that keeps or drops whole documents: implement `filter(doc)`."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats, reject = self.stats, self.on_reject
        for doc in docs:
            stats.docs_in += 1
            verdict = self.filter(doc)
            if verdict is True or (verdict is not False and verdict[0]):
                stats.docs_out += 1
                yield doc
            else:
                reason = self.name if verdict is False else verdict[1]
                stats.removed[reason] += 1
                reject(doc, self.name, reason)


class Mapper(Step):
    """A step that rewrites documents: implement `apply(doc)`; returns the doc (or None to drop it,
    counted as removed with reason `empty_after_<name>`)."""

    def apply(self, doc: Document) -> Document | None:
        raise NotImplementedError

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats, reject = self.stats, self.on_reject
        for doc in docs:
            stats.docs_in += 1
            out = self.apply(doc)
            if out is None or not out.text.strip():
                reason = f"empty_after_{self.name}"
                stats.removed[reason] += 1
                reject(doc, self.name, reason)
                continue
            stats.docs_out += 1
            yield out


class GlobalStep(Step):
    """A step that needs every document of the corpus (dedup). The executor drives it in phases:
    `signature(doc)` in the workers, `select(...)` once over all signatures."""

    is_global = True

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        # Single-process use (a notebook over a small list): compute and select in memory.
        docs = list(docs)
        keep = self.select_in_memory(docs)
        for doc, (kept, reason) in zip(docs, keep, strict=False):
            self.stats.docs_in += 1
            if kept:
                self.stats.docs_out += 1
                yield doc
            else:
                self.stats.removed[reason] += 1
                self.on_reject(doc, self.name, reason)

    def select_in_memory(self, docs: list[Document]) -> list[tuple[bool, str]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Built-in steps by name (the names used in data.yaml `steps:`)
# ---------------------------------------------------------------------------------------------

BUILTIN_STEPS: dict[str, str] = {
    "clean": "llmchain.data.clean:CleanText",
    "length": "llmchain.data.filters:LengthFilter",
    "gopher_quality": "llmchain.data.filters:GopherQualityFilter",
    "gopher_repetition": "llmchain.data.filters:GopherRepetitionFilter",
    "c4": "llmchain.data.filters:C4LineFilter",
    "language": "llmchain.data.filters:LanguageFilter",
    "pii": "llmchain.data.pii:PIIRedactor",
    "exact_dedup": "llmchain.data.dedup:ExactDedup",
    "near_dedup": "llmchain.data.dedup:NearDedup",
}


def configure(step: Step, config_class: type, settings: dict[str, Any]) -> None:
    """Validate a step's settings with its config class (config.py: the one place their defaults are
    written) and set them as the step's attributes. ConfigError naming the step and the field."""
    from pydantic import ValidationError

    from llmchain.config import format_validation_error

    try:
        values = config_class(**settings)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"step {step.name!r}")) from None
    for name in type(values).model_fields:
        setattr(step, name, getattr(values, name))


def build_steps(config: Any) -> list[Step]:
    """The steps named in `config.steps`, each built from its section of the config (DataConfig)."""
    steps: list[Step] = []
    for name in config.steps:
        if name not in BUILTIN_STEPS:
            known = ", ".join(BUILTIN_STEPS)
            raise ConfigError(f"unknown step {name!r} in steps (known: {known})")
        section = getattr(config, name)
        kwargs = section.model_dump(mode="json") if section is not None else {}
        steps.append(step_from_spec({"class": BUILTIN_STEPS[name], "kwargs": kwargs}))
    check_order(steps)
    return steps


def check_order(steps: list[Step]) -> None:
    """Dedup steps look at the whole corpus, so they must come after every per-document step."""
    seen_global = None
    for step in steps:
        if step.is_global:
            seen_global = step.name
        elif seen_global is not None:
            raise ConfigError(
                f"step {step.name!r} comes after the dedup step {seen_global!r}; put dedup steps last"
            )
