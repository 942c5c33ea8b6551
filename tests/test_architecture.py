"""ARCHITECTURE.md's module map is the code's: every module of src/llmchain is listed, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mapped_modules() -> set[str]:
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines()[1:]:
        m = re.match(r"( *)(\S+)", line)
        if not m:
            continue
        depth, name = len(m.group(1)) // 2, m.group(2)
        stack[depth:] = [name]
        if name.endswith(".py"):
            paths.add("".join(stack))
    return paths


def test_module_map_lists_every_module_and_only_those():
    real = {str(p.relative_to(REPO)) for p in (REPO / "src" / "llmchain").rglob("*.py")}
    mapped = _mapped_modules()
    assert mapped, "no module map found in ARCHITECTURE.md"
    assert not real - mapped, f"modules missing from ARCHITECTURE.md's map: {sorted(real - mapped)}"
    assert not mapped - real, f"ARCHITECTURE.md maps modules that do not exist: {sorted(mapped - real)}"


def test_every_command_in_the_table_lives_in_its_module():
    import importlib

    from llmchain.cli import COMMANDS

    for command, (module, function) in COMMANDS.items():
        group = command.split()[0]  # `data pack` lives in commands/data.py, `generate` in commands/generate.py
        assert module == group, f"{command!r} should live in commands/{group}.py, not commands/{module}.py"
        assert callable(getattr(importlib.import_module(f"llmchain.commands.{module}"), function)), command
