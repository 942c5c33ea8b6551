"""Typed configs for every stage (pydantic), loaded from YAML and overridden by CLI flags.

Each stage's config class lives in its own section below. `load_config(path, Cls, **overrides)`
reads a YAML file, applies the flags the user set explicitly, and validates; a wrong field or value
becomes a `ConfigError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmchain.errors import ConfigError


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


C = TypeVar("C", bound=BaseModel)


def format_validation_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: field '{field}': {first['msg']}{extra}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file or bad YAML is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Build `cls` from an optional YAML file plus overrides (None overrides are ignored).

    Flags win over the file, the file wins over defaults.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path) if path else "options")) from None


# ---------------------------------------------------------------------------------------------
# Stage configs. Each section is owned by its stage; keep them next to each other so a reader sees
# every knob of the chain in one file.
# ---------------------------------------------------------------------------------------------

# --- data (data prepare) ---------------------------------------------------------------------

# --- tokenizer + pack ------------------------------------------------------------------------

# --- pretrain --------------------------------------------------------------------------------

# --- finetune --------------------------------------------------------------------------------

# --- eval ------------------------------------------------------------------------------------

# --- serve -----------------------------------------------------------------------------------

# --- recipe ----------------------------------------------------------------------------------
