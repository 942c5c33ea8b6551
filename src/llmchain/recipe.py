"""Recipes: one YAML file takes raw text to a served model, and a re-run does only what changed.

A recipe names its stages, says which earlier output (or file) each one takes and gives each its
config. `run_recipe` orders the stages by their inputs and runs each into `runs/NAME/STAGE/`.

A stage is up to date when its *fingerprint* — the hash of its kind, its config, the content hashes
of its inputs and the version of the code that implements it — equals the one recorded when it last
finished, and its output is still what it wrote. The record is `runs/NAME/.recipe/STAGE.json`
(beside, not inside, the artifact, which the stage may replace atomically). An input that is an
earlier stage is identified by the content hash of that stage's output, so a change upstream re-runs
exactly the stages downstream of it; file inputs are hashed once and re-hashed only when their size
or mtime changes (git's stat cache). A stage that was interrupted resumes into its old dir when its
fingerprint is unchanged; a stage that must re-run for any other reason starts from an empty dir.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain import __version__
from llmchain.artifacts import atomic_write_json, sha256_path
from llmchain.errors import ConfigError, UserError

BUILTIN_DIR = Path(__file__).parent / "recipes"
STAMP_DIR = ".recipe"


@dataclass
class StageContext:
    """What a stage's `run` gets: where to write, its inputs (resolved paths) and its config."""

    name: str
    out_dir: Path
    inputs: dict[str, Path]
    config: dict[str, Any]
    run_dir: Path
    log: Callable[[str], None] = print


@dataclass
class StageType:
    """A kind of stage: its input roles, how to run it and which code it is made of.

    `run(ctx)` writes the artifact into `ctx.out_dir` and returns a few numbers for the summary.
    `output` is the part of the stage dir that later stages take (e.g. "final" for pretraining).
    `check(config)` validates a config before anything runs (raise ConfigError/UserError).
    `code` lists the modules (or packages) whose source is hashed into the stage's code version.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any] | None]
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    output: str | Callable[[dict[str, Any]], str] = ""  # may depend on the config (e.g. the fine-tuning task)
    check: Callable[[dict[str, Any]], None] | None = None
    code: tuple[str, ...] = ()
    help: str = ""


STAGE_TYPES: dict[str, StageType] = {}


def register_stage(stage: StageType) -> StageType:
    """Add (or replace) a kind of stage that recipes can name."""
    STAGE_TYPES[stage.name] = stage
    return stage


def stage_types() -> dict[str, StageType]:
    from llmchain import recipe_stages  # noqa: F401  (registers the built-in stages on import)

    return STAGE_TYPES


# ------------------------------------------------------------------------------------ loading


@dataclass
class Stage:
    name: str
    type: StageType
    inputs: dict[str, str]  # role → stage name or resolved path (as str)
    config: dict[str, Any]
    depends: list[str] = field(default_factory=list)  # names of the stages it takes


@dataclass
class Recipe:
    name: str
    description: str
    source: str  # file the recipe came from (for messages)
    stages: list[Stage]  # in run order

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise UserError(f"{self.source}: no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names → their YAML files."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def resolve_recipe_path(ref: str | os.PathLike) -> Path:
    """A built-in name or a YAML path → the file; UserError naming both options when neither exists."""
    p = Path(ref)
    if p.is_file():
        return p
    builtins = builtin_recipes()
    if str(ref) in builtins:
        return builtins[str(ref)]
    raise UserError(f"recipe {str(ref)!r}: no such file and not a built-in recipe ({', '.join(builtins)})")


def load_recipe(
    ref: str | os.PathLike, overrides: list[str] | None = None, inputs: list[str] | None = None
) -> Recipe:
    """Read and check a recipe (a built-in name or a YAML path); `overrides` are "STAGE.KEY=VALUE"
    config changes, `inputs` are "STAGE.ROLE=PATH" input changes (PATH relative to the current dir).

    Every mistake — unknown stage kind, unknown or missing input, a cycle, a bad config field — is a
    ConfigError/UserError with one line naming the file, the stage and the field.
    """
    from llmchain.config import read_yaml

    path = resolve_recipe_path(ref)
    data = read_yaml(path)
    for item in overrides or []:
        _apply_override(data, item, str(path))
    for item in inputs or []:
        _apply_input(data, item, str(path))
    return parse_recipe(data, source=str(path), base_dir=path.parent)


def _apply_input(data: dict[str, Any], item: str, source: str) -> None:
    key, sep, value = item.partition("=")
    stage, dot, role = key.strip().partition(".")
    stages = data.get("stages")
    if not sep or not dot or not role or not value:
        raise UserError(f"--input {item!r}: expected STAGE.ROLE=PATH (e.g. finetune.model=runs/quickstart/pretrain/final)")
    if not isinstance(stages, dict) or stage not in stages:
        raise UserError(f"--input {item!r}: {source} has no stage {stage!r}")
    stages[stage].setdefault("inputs", {})[role] = value if value in stages else str(Path(value).resolve())


def expand_vars(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the environment; UserError naming an unset variable."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise UserError(f"environment variable {name} is not set")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    import yaml

    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2:
        raise UserError(f"--set {item!r}: expected STAGE.KEY=VALUE (e.g. pretrain.max_time=60)")
    stages = data.get("stages")
    if not isinstance(stages, dict) or parts[0] not in stages:
        raise UserError(f"--set {item!r}: {source} has no stage {parts[0]!r}")
    node = stages[parts[0]].setdefault("config", {})
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def parse_recipe(data: dict[str, Any], *, source: str, base_dir: Path) -> Recipe:
    """Check a recipe mapping and order its stages (see `load_recipe`)."""
    from pydantic import ValidationError

    from llmchain.config import RecipeConfig, format_validation_error

    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    if not cfg.stages:
        raise ConfigError(f"{source}: the recipe has no stages")
    types = stage_types()
    stages: dict[str, Stage] = {}
    for name, spec in cfg.stages.items():
        kind = spec.type or name
        if kind not in types:
            raise ConfigError(
                f"{source}: stage {name!r}: unknown stage type {kind!r} (known: {', '.join(sorted(types))})"
            )
        st = types[kind]
        for role in spec.inputs:
            if role not in st.inputs + st.optional:
                raise ConfigError(f"{source}: stage {name!r}: unknown input {role!r} "
                                  f"({kind} takes: {', '.join(st.inputs + st.optional) or 'nothing'})")  # fmt: skip
        for role in st.inputs:
            if role not in spec.inputs:
                raise ConfigError(f"{source}: stage {name!r}: missing input {role!r} (the name of an earlier "
                                  "stage or a path)")  # fmt: skip
        inputs, depends = {}, []
        for role, ref in spec.inputs.items():
            if ref in cfg.stages:
                if ref == name:
                    raise ConfigError(f"{source}: stage {name!r}: input {role!r} is the stage itself (a cycle)")
                inputs[role] = ref
                depends.append(ref)
            else:
                try:
                    p = Path(expand_vars(ref)).expanduser()
                except UserError as e:
                    raise ConfigError(f"{source}: stage {name!r}: input {role!r}: {ref!r}: {e} (set it, or pass "
                                      f"--input {name}.{role}=PATH)") from None  # fmt: skip
                p = p if p.is_absolute() else base_dir / p
                if not p.exists():
                    raise ConfigError(f"{source}: stage {name!r}: input {role!r}: {ref!r} is neither a stage of "
                                      f"this recipe nor an existing path ({p})")  # fmt: skip
                inputs[role] = str(p.resolve())
        if st.check is not None:
            try:
                st.check(dict(spec.config))
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, f"{source}: stage {name!r}: config")) from None
            except UserError as e:
                raise type(e)(f"{source}: stage {name!r}: {e}") from None
        stages[name] = Stage(name, st, inputs, dict(spec.config), depends)
    return Recipe(cfg.name, cfg.description, source, _order(stages, source))


def _order(stages: dict[str, Stage], source: str) -> list[Stage]:
    """Stages in dependency order, ties kept in file order; ConfigError naming a cycle."""
    done: dict[str, bool] = {}  # name → finished (False: on the current path)
    order: list[Stage] = []

    def visit(name: str, path: list[str]) -> None:
        if done.get(name) is True:
            return
        if name in done:
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"{source}: stages form a cycle: {' → '.join(cycle)}")
        done[name] = False
        for dep in stages[name].depends:
            visit(dep, path + [name])
        done[name] = True
        order.append(stages[name])

    for name in stages:
        visit(name, [])
    return order


# ---------------------------------------------------------------------------- fingerprints


def code_version(stage: StageType) -> str:
    """llmchain's version + a hash of the source of the modules that implement `stage`."""
    h = hashlib.sha256()
    for mod in stage.code:
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            h.update(f"{mod}:missing\n".encode())
            continue
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\n")
    return f"{__version__}+{h.hexdigest()[:16]}"


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

    def out_dir(self, stage: Stage) -> Path:
        return self.run_dir / stage.name

    def output_of(self, name: str) -> Path:
        stage = self.recipe.stage(name)
        sub = stage.type.output(stage.config) if callable(stage.type.output) else stage.type.output
        return self.out_dir(stage) / sub if sub else self.out_dir(stage)

    def stamp_path(self, stage: Stage) -> Path:
        return self.run_dir / STAMP_DIR / f"{stage.name}.json"

    def stamp(self, stage: Stage) -> dict[str, Any]:
        if stage.name not in self._stamps:
            try:
                self._stamps[stage.name] = json.loads(self.stamp_path(stage).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._stamps[stage.name] = {}
        return self._stamps[stage.name]

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
        return {"type": stage.type.name, "config": _config_hash(stage.config), "code": code_version(stage.type),
                "inputs": inputs, "input_cache": cache}  # fmt: skip

    def why(self, stage: Stage, fp: dict[str, Any]) -> str | None:
        """Why `stage` must run (None when up to date)."""
        old = self.stamp(stage)
        upstream = [d for d in stage.depends if d in self._will_run]
        if upstream:
            return f"{upstream[0]!r} re-runs"
        if not old:
            return "never run" if not self.out_dir(stage).exists() else "no record of a finished run"
        if old.get("state") != "done":
            return "interrupted run (resuming)" if self._same(old, fp) else "interrupted run"
        if old.get("type") != fp["type"]:
            return "stage type changed"
        if old.get("config") != fp["config"]:
            return "config changed"
        for role, h in fp["inputs"].items():
            if old.get("inputs", {}).get(role) != h:
                return f"input {role!r} changed"
        if old.get("code") != fp["code"]:
            return "code changed"
        out = self.output_of(stage.name)
        if not out.exists():
            return "output missing"
        cache = {"stat": old.get("output_stat"), "sha256": old.get("output_sha256")}
        if _cached_hash(out, cache) != old.get("output_sha256"):
            return "output modified"
        return None

    @staticmethod
    def _same(old: dict[str, Any], fp: dict[str, Any]) -> bool:
        return all(old.get(k) == fp[k] for k in ("type", "config", "code", "inputs"))

    def plan(self, only: str | None = None, start: str | None = None, force: bool = False) -> list[StageStatus]:
        """What a run would do, stage by stage. `only`: just that stage (forced); `start`: that stage and
        every later one (forced); earlier ones are then taken as they are."""
        names = [s.name for s in self.recipe.stages]
        for flag, value in (("--only", only), ("--from", start)):
            if value is not None and value not in names:
                raise UserError(f"{flag} {value}: {self.recipe.source} has no such stage ({', '.join(names)})")
        self._will_run = set()
        plan = []
        for i, stage in enumerate(self.recipe.stages):
            if only is not None and stage.name != only or start is not None and i < names.index(start):
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
        old = self.stamp(stage)
        if out.exists() and not (old.get("state") == "running" and self._same(old, fp)):
            shutil.rmtree(out)  # a fresh start: no stale checkpoints or files of an older config
        record = {**fp, "state": "running", "stage": stage.name, "started": time.time()}
        atomic_write_json(self.stamp_path(stage), record)
        self._stamps[stage.name] = record
        self.log(f"[bold cyan]▶ [{index}/{total}] {stage.name}[/] ({stage.type.name}) — {status.reason}")
        t0 = time.perf_counter()
        ctx = StageContext(stage.name, out, self.input_paths(stage), dict(stage.config), self.run_dir, self.log)
        status.summary = stage.type.run(ctx) or {}
        status.seconds = time.perf_counter() - t0
        output = self.output_of(stage.name)
        if not output.exists():
            raise RuntimeError(f"stage {stage.name!r} finished without writing {output}")
        cache: dict[str, Any] = {}
        record.update(state="done", seconds=round(status.seconds, 2), output_sha256=_cached_hash(output, cache),
                      output_stat=cache["stat"], summary=status.summary)  # fmt: skip
        atomic_write_json(self.stamp_path(stage), record)

    def run(self, only: str | None = None, start: str | None = None, force: bool = False) -> list[StageStatus]:
        """Run what is out of date; returns every stage's status (ran or not, why, time, summary)."""
        plan = self.plan(only, start, force)
        todo = [s for s in plan if s.run]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.json").write_text(json.dumps(self.describe(), indent=2) + "\n")
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
    force: bool = False,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    inputs: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Runner, list[StageStatus]]:
    """Load the recipe `ref` and run (or, with `dry_run`, only plan) it. Returns the runner and the plan."""
    runner = Runner(load_recipe(ref, overrides, inputs), runs_dir, log)
    return runner, runner.plan(only, start, force) if dry_run else runner.run(only, start, force)
