"""Recipe files: the kinds of stage a recipe can name, and reading + checking a recipe YAML.

A recipe names its stages; each has a kind (`type`, default: its name), inputs (role → the name of an
earlier stage, or a path relative to the recipe file, with `${VAR}` / `${VAR:-default}` taken from
the environment) and a config checked by the stage's own config class. `load_recipe` returns the
stages in dependency order or raises one ConfigError/UserError line naming the file, stage and field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain.errors import ConfigError, UserError
from llmchain.recipe_stages import BUILTIN_STAGES, StageContext, StageType  # noqa: F401  (re-exported)

BUILTIN_DIR = Path(__file__).parent / "recipes"
# Recipe and stage names become directories (runs/NAME/STAGE): one plain path component each.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# The kinds of stage a recipe can name: the built-ins, plus any a program registers.
STAGE_TYPES: dict[str, StageType] = dict(BUILTIN_STAGES)


def register_stage(stage: StageType) -> StageType:
    """Add (or replace) a kind of stage that recipes can name."""
    STAGE_TYPES[stage.name] = stage
    return stage


def stage_types() -> dict[str, StageType]:
    return STAGE_TYPES


def check_name(name: Any, what: str, source: str) -> str:
    """`name` when it is safe as one directory name; else a one-line ConfigError naming `what`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{source}: {what}: {name!r} is not a valid name (it becomes a directory under "
                          "runs/: 1-100 letters, digits, '_', '-', '.', starting with a letter or digit; "
                          "no '/' or '..')")  # fmt: skip
    return name


# ------------------------------------------------------------------------------------ loading


@dataclass
class Stage:
    name: str
    type: StageType
    inputs: dict[str, str]  # role → stage name or resolved path (as str)
    config: dict[str, Any]  # as written in the recipe (what the stage's run gets)
    depends: list[str] = field(default_factory=list)  # names of the stages it takes
    checked: dict[str, Any] | None = None  # the config as the stage uses it, defaults filled in (hashed)


@dataclass
class Recipe:
    name: str
    description: str
    source: str  # file the recipe came from (for messages)
    stages: list[Stage]  # in run order
    budget: float | None = None  # seconds; training stages with a `share` get max_time = share × budget

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
    """`${VAR}` and `${VAR:-default}` from the environment; UserError naming an unset variable.

    `${LLMCHAIN_RECIPES}` is the built-in recipes dir (with the demo corpus) unless the environment sets it,
    so a copy of a built-in recipe still finds `${LLMCHAIN_RECIPES}/corpus/tinyshakespeare.txt`.
    """

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3)
        if name in os.environ:
            return os.environ[name]
        if name == "LLMCHAIN_RECIPES":
            return str(BUILTIN_DIR)
        if default is not None:
            return default
        raise UserError(f"environment variable {name} is not set")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    import yaml

    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if sep and parts == ["budget"]:  # the recipe's own wall-time budget, shared among its stages
        data["budget"] = yaml.safe_load(value)
        return
    if not sep or len(parts) < 2:
        raise UserError(f"--set {item!r}: expected STAGE.KEY=VALUE (e.g. pretrain.max_time=60) or budget=DURATION")
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
    check_name(cfg.name, "field 'name'", source)
    for name in cfg.stages:
        check_name(name, "field 'stages': stage name", source)
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
        config = dict(spec.config)
        if spec.share is not None:
            if cfg.budget is None:
                raise ConfigError(f"{source}: stage {name!r}: 'share' needs a recipe 'budget' (e.g. budget: 15m)")
            config.setdefault("max_time", round(spec.share * cfg.budget, 1))
        checked = None
        if st.check is not None:
            try:
                checked = st.check(dict(config))
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, f"{source}: stage {name!r}: config")) from None
            except UserError as e:
                raise type(e)(f"{source}: stage {name!r}: {e}") from None
        stages[name] = Stage(name, st, inputs, config, depends, checked)
    return Recipe(cfg.name, cfg.description, source, _order(stages, source), cfg.budget)


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
