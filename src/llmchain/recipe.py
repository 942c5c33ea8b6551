"""Recipes: one YAML file takes raw text to a served model, and a re-run does only what changed.

A recipe names its stages, says which earlier output (or file) each one takes and gives each its
config. `run_recipe` orders the stages by their inputs and runs each into `runs/NAME/STAGE/`.

A stage is up to date when its *fingerprint* — the hash of its kind, its config as checked (defaults
filled in, so a changed default counts), the content hashes of its inputs and the code it really runs
(the modules its adapter imports, found statically: llmchain.recipe_code) — equals the one recorded
when it last finished, and its output is still what it wrote. The record is
`runs/NAME/.recipe/STAGE.json` (beside, not inside, the artifact, which the stage may replace
atomically). An input that is an earlier stage is identified by the content hash of that stage's
output, so a change upstream re-runs exactly the stages downstream of it; file inputs are hashed once
and re-hashed only when their size or mtime changes (git's stat cache). A stage that was interrupted
resumes where it was when its fingerprint is unchanged (training continues from its checkpoint); any
other run starts afresh, beside the old output when there is one (`.recipe/work/STAGE`), which it
replaces only on success: a failed re-run, or one whose record is unreadable, never costs the output.
docs/recipes-cache.md has the rules in short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain import __version__, recipe_code
from llmchain.artifacts import atomic_write_json, sha256_path
from llmchain.errors import UserError
from llmchain.recipe_file import (  # noqa: F401  (re-exported: llmchain.recipe is the public module)
    STAGE_TYPES,
    Recipe,
    Stage,
    StageContext,
    StageType,
    builtin_recipes,
    load_recipe,
    parse_recipe,
    register_stage,
    resolve_recipe_path,
    stage_types,
)

STAMP_DIR = ".recipe"
UNREADABLE = "unreadable"  # the state of a stamp that exists but cannot be read: nothing is known


# ---------------------------------------------------------------------------- fingerprints


def code_version(stage: StageType) -> str:
    """llmchain's version + a hash of the code `stage` really runs (see llmchain.recipe_code): editing a
    module the stage does not import leaves it unchanged; editing one it does (even lazily) changes it."""
    code = recipe_code.stage_code([stage.run, stage.check, stage.output if callable(stage.output) else None])
    output = stage.output if isinstance(stage.output, str) else ""  # a callable one is part of the code
    code.values.append(repr((stage.inputs, stage.optional, output)))
    return f"{__version__}+{recipe_code.code_hash(code)[:16]}"


def _stat_signature(path: Path) -> str:
    """Cheap change detector: relative names, sizes and mtimes (no content read)."""
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached_hash(path: Path, cache: dict[str, Any]) -> str:
    """sha256_path(path), reusing `cache` (stat signature → hash) while the stat signature holds."""
    if not path.exists():
        return "missing"
    sig = _stat_signature(path)
    if cache.get("stat") == sig and cache.get("sha256"):
        return cache["sha256"]
    cache.update(stat=sig, sha256=sha256_path(path))
    return cache["sha256"]


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------- running


@dataclass
class StageStatus:
    stage: Stage
    run: bool
    reason: str  # why it runs, or "up to date"
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    forced: bool = False  # selected by --only/--from/--force: runs whatever the up-to-date check says


class Runner:
    """Plans and runs one recipe in `runs_dir/NAME/`."""

    def __init__(self, recipe: Recipe, runs_dir: str | os.PathLike = "runs", log: Callable[[str], None] = print):
        self.recipe = recipe
        self.run_dir = Path(runs_dir) / recipe.name
        self.log = log
        self._stamps: dict[str, dict[str, Any]] = {}
        self._will_run: set[str] = set()
        recipe_code.load_index(self.code_index)  # what a plan needs of each source file, by content

    @property
    def code_index(self) -> Path:
        return self.run_dir / STAMP_DIR / "code-index.json"

    def out_dir(self, stage: Stage) -> Path:
        return self.run_dir / stage.name

    def output_of(self, name: str) -> Path:
        stage = self.recipe.stage(name)
        return self._output_in(stage, self.out_dir(stage))

    @staticmethod
    def _output_in(stage: Stage, directory: Path) -> Path:
        sub = stage.type.output(stage.config) if callable(stage.type.output) else stage.type.output
        return directory / sub if sub else directory

    def stamp_path(self, stage: Stage) -> Path:
        return self.run_dir / STAMP_DIR / f"{stage.name}.json"

    def stamp(self, stage: Stage) -> dict[str, Any]:
        """The stage's record: {} when there is none, {"state": "unreadable"} when it cannot be read."""
        if stage.name not in self._stamps:
            try:
                record = json.loads(self.stamp_path(stage).read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except FileNotFoundError:
                record = {}
            except (OSError, ValueError) as e:  # corrupt or unreadable: never taken as "nothing there"
                record = {"state": UNREADABLE, "error": f"{type(e).__name__}: {e}"}
            self._stamps[stage.name] = record
        return self._stamps[stage.name]

    def work_dir(self, stage: Stage) -> Path:
        """Where a re-run writes while the old output stays in place; swapped in when it succeeds."""
        return self.run_dir / STAMP_DIR / "work" / stage.name

    def input_paths(self, stage: Stage) -> dict[str, Path]:
        return {role: self.output_of(ref) if ref in stage.depends else Path(ref) for role, ref in stage.inputs.items()}

    def fingerprint(self, stage: Stage) -> dict[str, Any]:
        """The parts of a stage's fingerprint: kind, config hash, code version, input hashes."""
        old = self.stamp(stage).get("input_cache", {})
        inputs, cache = {}, {}
        for role, ref in stage.inputs.items():
            if ref in stage.depends:  # an earlier stage: the content hash it recorded for its output
                inputs[role] = self.stamp(self.recipe.stage(ref)).get("output_sha256", "missing")
            else:
                cache[role] = dict(old.get(role, {})) if old.get(role, {}).get("path") == ref else {"path": ref}
                inputs[role] = _cached_hash(Path(ref), cache[role])
        config = stage.checked if stage.checked is not None else stage.config  # defaults filled in
        return {"type": stage.type.name, "config": _config_hash(config), "code": code_version(stage.type),
                "inputs": inputs, "input_cache": cache}  # fmt: skip

    def why(self, stage: Stage, fp: dict[str, Any]) -> str | None:
        """Why `stage` must run (None when up to date)."""
        old = self.stamp(stage)
        upstream = [d for d in stage.depends if d in self._will_run]
        if upstream:
            return f"{upstream[0]!r} re-runs"
        if not old:
            return "never run" if not self.out_dir(stage).exists() else "no record of a finished run"
        if old.get("state") == UNREADABLE:
            return "its record is unreadable"
        changed = self._changed(old, fp)
        if old.get("state") != "done":
            return f"interrupted run (starting over: {changed})" if changed else "interrupted run (resuming)"
        if changed is not None:
            return changed
        out = self.output_of(stage.name)
        if not out.exists():
            return "output missing"
        cache = {"stat": old.get("output_stat"), "sha256": old.get("output_sha256")}
        if _cached_hash(out, cache) != old.get("output_sha256"):
            return "output modified"
        return None

    @staticmethod
    def _changed(old: dict[str, Any], fp: dict[str, Any]) -> str | None:
        """What differs between a record and a fingerprint ("config changed", ...), None when nothing."""
        if old.get("type") != fp["type"]:
            return "stage type changed"
        if old.get("config") != fp["config"]:
            return "config changed"
        was = old.get("inputs") or {}
        for role in sorted(set(fp["inputs"]) | set(was)):
            if was.get(role) != fp["inputs"].get(role):
                return f"input {role!r} changed"
        if old.get("code") != fp["code"]:
            return "code changed"
        return None

    def plan(
        self, only: str | None = None, start: str | None = None, force: bool = False, until: str | None = None
    ) -> list[StageStatus]:
        """What a run would do, stage by stage. `only`: just that stage (forced); `start`: that stage and
        every later one (forced), earlier ones taken as they are; `until`: no stage after that one."""
        names = [s.name for s in self.recipe.stages]
        for flag, value in (("--only", only), ("--from", start), ("--until", until)):
            if value is not None and value not in names:
                raise UserError(f"{flag} {value}: {self.recipe.source} has no such stage ({', '.join(names)})")
        self._will_run = set()
        plan = []
        for i, stage in enumerate(self.recipe.stages):
            if (only is not None and stage.name != only or start is not None and i < names.index(start)
                    or until is not None and i > names.index(until)):  # fmt: skip
                plan.append(StageStatus(stage, False, "not selected"))
                continue
            forced = bool(force or only or start)
            reason = self.why(stage, self.fingerprint(stage))
            if reason is None and forced:
                reason = "forced"
            if reason is not None:
                self._will_run.add(stage.name)
            plan.append(StageStatus(stage, reason is not None, reason or "up to date", forced=forced))
        return plan

    def run_stage(self, status: StageStatus, index: int, total: int) -> None:
        stage = status.stage
        for role, path in self.input_paths(stage).items():
            if not path.exists():
                raise UserError(f"stage {stage.name!r}: input {role!r} ({path}) does not exist; run the stages "
                                "before it first (without --only/--from)")  # fmt: skip
        fp = self.fingerprint(stage)
        out = self.out_dir(stage)
        self.log(f"[bold cyan]▶ [{index}/{total}] {stage.name}[/] ({stage.type.name}) — {status.reason}")
        work = self._choose_work_dir(stage, fp)
        record = {**fp, "state": "running", "stage": stage.name, "started": time.time(),
                  "workdir": work.relative_to(self.run_dir).as_posix()}  # fmt: skip
        atomic_write_json(self.stamp_path(stage), record)
        self._stamps[stage.name] = record
        t0 = time.perf_counter()
        inputs = self.input_paths(stage)
        ctx = StageContext(stage.name, work, inputs, dict(stage.config), self.run_dir, self.log)
        summary = stage.type.run(ctx) or {}
        status.seconds = time.perf_counter() - t0
        written = self._output_in(stage, work)
        if not written.exists():
            raise RuntimeError(f"stage {stage.name!r} finished without writing {written}")
        if work != out:
            self._swap_in(work, out, self.run_dir / STAMP_DIR / "old" / stage.name)
        # Numbers that name a path (e.g. the exported file) name where it is now.
        status.summary = {k: v.replace(str(work), str(out)) if isinstance(v, str) else v
                          for k, v in summary.items()}  # fmt: skip
        output = self.output_of(stage.name)
        cache: dict[str, Any] = {}
        record.update(state="done", workdir=stage.name, seconds=round(status.seconds, 2),
                      summary=status.summary, output_sha256=_cached_hash(output, cache),
                      output_stat=cache["stat"])  # fmt: skip
        atomic_write_json(self.stamp_path(stage), record)

    def _choose_work_dir(self, stage: Stage, fp: dict[str, Any]) -> Path:
        """Where the stage runs. An interrupted run with the same fingerprint resumes where it was (its
        checkpoints); otherwise it starts afresh: in its own dir when there is none yet, else in the
        work dir, swapped in on success, so the old output (or one whose record is unreadable) is
        never deleted before a new one is complete. Only the engine's own work dir is ever cleared."""
        old, out, scratch = self.stamp(stage), self.out_dir(stage), self.work_dir(stage)
        if old.get("state") == "running":
            was = self.run_dir / str(old.get("workdir", stage.name))
            changed = self._changed(old, fp)
            if changed is None and was in (out, scratch) and was.exists():
                self.log(f"{stage.name}: resuming the interrupted run in {was}")
                return was
            if changed is not None:
                self.log(f"{stage.name}: starting over, {changed} since the interrupted run")
        elif old.get("state") == UNREADABLE and out.exists():
            self.log(f"{stage.name}: its record is unreadable ({old.get('error')}); running into {scratch}, "
                     f"{out} stays until the new output is complete")  # fmt: skip
        if scratch.exists():
            shutil.rmtree(scratch)  # an earlier attempt of the engine's own that will not be resumed
        return out if not out.exists() else scratch

    @staticmethod
    def _swap_in(work: Path, out: Path, old: Path) -> None:
        """Replace `out` by the finished `work` (two renames, by way of `old`; the old output is deleted
        last). `old` is in a dir of its own: a name beside `work` could be another stage's work dir."""
        if old.exists():
            shutil.rmtree(old)  # left by a swap that was cut between its renames: `out` has the newer one
        old.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)

    def run(
        self, only: str | None = None, start: str | None = None, force: bool = False, until: str | None = None
    ) -> list[StageStatus]:
        """Run what is out of date; returns every stage's status (ran or not, why, time, summary)."""
        plan = self.plan(only, start, force, until)
        todo = [s for s in plan if s.run]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "recipe.json", self.describe())  # the recipe as it was run
        recipe_code.save_index(self.code_index)
        for n, status in enumerate(todo, 1):
            if status.reason.endswith(" re-runs") and not status.forced:
                # Its upstream has run now: if that re-made the same output, this stage is still up to date.
                self._will_run -= {s.stage.name for s in todo[: n - 1]}
                reason = self.why(status.stage, self.fingerprint(status.stage))
                if reason is None:
                    status.run, status.reason = False, "up to date (its inputs came out unchanged)"
                    continue
                status.reason = reason
            self.run_stage(status, n, len(todo))
        return plan

    def describe(self) -> dict[str, Any]:
        return {"name": self.recipe.name, "source": self.recipe.source,
                "stages": {s.name: {"type": s.type.name, "inputs": s.inputs, "config": s.config}
                           for s in self.recipe.stages}}  # fmt: skip


def run_recipe(
    ref: str | os.PathLike,
    *,
    runs_dir: str | os.PathLike = "runs",
    only: str | None = None,
    start: str | None = None,
    until: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    inputs: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Runner, list[StageStatus]]:
    """Load the recipe `ref` and run (or, with `dry_run`, only plan) it. Returns the runner and the plan."""
    runner = Runner(load_recipe(ref, overrides, inputs), runs_dir, log)
    selection = {"only": only, "start": start, "until": until, "force": force}
    return runner, runner.plan(**selection) if dry_run else runner.run(**selection)
