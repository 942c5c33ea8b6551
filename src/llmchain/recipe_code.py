"""Which code a recipe stage is made of, found statically, and its fingerprint.

A stage's code is what its callables (`run`, `check`, a callable `output`) really reach: in the module
that defines them, the top-level definitions they name (transitively, so a helper such as `_cfg`
counts and the other stages' adapters do not); from there, every llmchain module imported — at module
level or inside a function, since heavy imports are lazy — and everything those import, read with
`ast` rather than taken from `sys.modules` (which holds whatever else the process happened to import).
Package data a reached module names by a literal (serve/kernel.py's "kernels.c") counts too.

The fingerprint hashes the syntax tree of that code without docstrings (`ast.dump`), so reflowing a
line or editing a comment does not re-run a five-minute pretraining, while any change to what the code
does — a default, a constant, an operator — does. Limits: a module named only by a runtime string
(`importlib.import_module(config value)`, e.g. a custom data step) is not followed; library versions
are not part of it.

What a module contributes (its imports, string literals and tree hash) is kept by the digest of its
bytes in an index the runner saves in runs/NAME/.recipe/code-index.json, so a plan re-parses only what
changed and the files that define the stages.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "llmchain"
PACKAGE_DIR = Path(__file__).resolve().parent  # the tree that is hashed (tests point it at a copy)


# What the fingerprint needs of one module file, by (its path in the package, a digest of its bytes):
# kept in memory, and saved between runs (`load_index`/`save_index`) so that a plan does not parse ~50
# files again (~1 s). The digest makes it exact: an edit is seen even within one mtime tick.
_INDEX: dict[str, dict[str, Any]] = {}
_INDEX_VERSION = f"1 python {sys.version_info[0]}.{sys.version_info[1]}"  # ast.dump differs by version
_TREES: dict[str, ast.Module] = {}  # the same key → the parsed tree, docstrings dropped (this process only)
_USED: set[str] = set()  # the keys this process looked at: what `save_index` keeps


def module_file(name: str) -> Path | None:
    """The source file of llmchain module `name` under PACKAGE_DIR (None: not llmchain, or no such file)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py") if parts[1:] else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join((PACKAGE, *(rel[:-1] if rel[-1] == "__init__" else rel)))


_SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (with their packages, which importing them runs)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's package, up level-1 more
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
    return [".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)]


def _imports_in(nodes: Iterable[ast.AST], module: str, is_package: bool) -> set[str]:
    """llmchain modules imported anywhere under `nodes` (function bodies included)."""
    found = {name for top in nodes for node in ast.walk(top) for name in _imported(node, module, is_package)}
    return {m for m in found if module_file(m) is not None}


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and type(stmt.value.value) is str


def _key(path: Path) -> tuple[str, bytes]:
    source = path.read_bytes()
    rel = path.relative_to(PACKAGE_DIR).as_posix() if path.is_relative_to(PACKAGE_DIR) else str(path)
    return f"{rel}:{hashlib.blake2b(source, digest_size=16).hexdigest()}", source


def parse(path: Path) -> ast.Module:
    """The syntax tree of `path`, docstrings dropped (parsed once per content)."""
    key, source = _key(path)
    _USED.add(key)
    if key not in _TREES:
        _TREES[key] = tree = ast.parse(source, filename=str(path))
        try:
            module, is_pkg = _module_name(path), path.name == "__init__.py"
        except ValueError:  # outside llmchain (a test's or a plugin's stage): only absolute imports resolve
            module, is_pkg = path.stem, False
        imports: set[str] = set()
        strings: set[str] = set()
        for node in ast.walk(tree):  # one pass: imports, string literals, docstrings dropped
            if isinstance(node, ast.Constant) and type(node.value) is str:
                if len(node.value) <= 200 and "\n" not in node.value:  # could name a file
                    strings.add(node.value)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.update(_imported(node, module, is_pkg))
            elif isinstance(node, _SCOPES) and node.body and _is_docstring(node.body[0]):
                node.body = node.body[1:]
        digest = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
        _INDEX[key] = {"imports": sorted(imports), "strings": sorted(strings), "code": digest}
    return _TREES[key]


def summary(path: Path) -> dict[str, Any]:
    """What `path` imports (dotted names, llmchain or not), its string literals, and `code`: the sha256
    of its syntax tree without docstrings — from the index when its bytes are known, else parsed."""
    key, _ = _key(path)
    _USED.add(key)
    if key not in _INDEX:
        parse(path)
    return _INDEX[key]


def load_index(path: Path) -> None:
    """Add a saved index (see `save_index`) to this process's; an unreadable one is ignored."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("version") == _INDEX_VERSION and isinstance(saved.get("files"), dict):
            _INDEX.update({k: v for k, v in saved["files"].items() if _valid_entry(v)})
    except (OSError, ValueError, AttributeError):
        pass


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("code"), str)
            and all(isinstance(entry.get(k), list) and all(isinstance(x, str) for x in entry[k])
                    for k in ("imports", "strings")))  # fmt: skip


def save_index(path: Path) -> None:
    from llmchain.artifacts import atomic_write_json

    # the package's files this process used (not a test's or plugin's, named by absolute path)
    live = {k: _INDEX[k] for k in sorted(_USED) if k in _INDEX and not k.startswith("/")}
    atomic_write_json(path, {"version": _INDEX_VERSION, "files": live})


def module_closure(modules: Iterable[str]) -> set[str]:
    """`modules` and every llmchain module they import, transitively (statically, lazy imports included)."""
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(m for m in summary(path)["imports"] if m not in seen and module_file(m) is not None)
    return seen


@functools.lru_cache(maxsize=4)
def _package_data(root: Path) -> dict[str, list[Path]]:
    """Each non-Python file under `root`, and each dir that is not a package, by its path → its files
    (one walk per process, instead of a stat per string literal of every module)."""
    data: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        if p.is_file() and p.suffix != ".py":
            data[str(p)] = [p]
        elif p.is_dir() and not (p / "__init__.py").exists():
            data[str(p)] = [f for f in sorted(p.rglob("*")) if f.is_file() and "__pycache__" not in f.parts]
    return data


def _data_files(path: Path) -> list[Path]:
    """Non-Python files beside module `path` that it names by a string literal (e.g. "kernels.c")."""
    data = _package_data(PACKAGE_DIR) if path.is_relative_to(PACKAGE_DIR) else {}
    out = []
    for text in summary(path)["strings"]:
        if (not text or "\0" in text or ".." in text or text.startswith(("/", "~"))
                or text.strip("./") == ""):  # fmt: skip
            continue
        out.extend(data.get(str(path.parent / text), []))
    return out


# ----------------------------------------------------------------------------- a stage's own code


def _top_level_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _first_line(stmt: ast.stmt) -> int:
    decorators = getattr(stmt, "decorator_list", [])
    return min([stmt.lineno] + [d.lineno for d in decorators])


@dataclass
class StageCode:
    """What a stage's fingerprint is made of."""

    entries: dict[Path, list[str]]  # file of a stage callable → its reached top-level statements (dumps)
    modules: set[str]  # llmchain modules imported from there, transitively
    values: list[str]  # simple values captured by closures (e.g. the config class name of a check)

    def files(self) -> list[Path]:
        """Every source and data file the fingerprint covers, sorted."""
        files = {module_file(m) for m in self.modules} | set(self.entries)
        files |= {d for f in list(files) if f is not None for d in _data_files(f)}
        return sorted(f for f in files if f is not None)


def _source_of(obj: Any) -> Path | None:
    name = getattr(obj, "__module__", None) or ""
    if module_file(name) is not None:  # llmchain's own: read from PACKAGE_DIR
        return module_file(name)
    try:
        return Path(inspect.getsourcefile(obj) or "")
    except TypeError:  # a builtin: nothing to read
        return None


def _collect(obj: Any, code: StageCode, seen: set[int]) -> None:
    """Add a stage callable (function, closure, lambda, class, or callable object) to `code`."""
    if id(obj) in seen or obj is None:
        return
    seen.add(id(obj))
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if not inspect.isfunction(obj) and not inspect.isclass(obj):
        func = getattr(obj, "func", None)  # functools.partial
        if func is not None:
            code.values.append(repr((getattr(obj, "args", ()), getattr(obj, "keywords", {}))))
            return _collect(func, code, seen)
        return _collect(type(obj), code, seen) if callable(obj) else None
    for cell in getattr(obj, "__closure__", None) or ():
        value = cell.cell_contents
        if callable(value):
            _collect(value, code, seen)
        else:  # plain data (a config class name, a dict of filled-in fields): its JSON; objects are skipped
            try:
                code.values.append(json.dumps(value, sort_keys=True))
            except (TypeError, ValueError):
                pass
    path = _source_of(obj)
    if path is None or not path.is_file():
        return
    tree = parse(path)
    top = obj.__qualname__.split(".")[0]  # a closure's or a method's enclosing top-level definition
    if top == "<lambda>":  # a lambda at module level: the statement around its line
        line = obj.__code__.co_firstlineno
        roots = [s for s in tree.body if _first_line(s) <= line <= (s.end_lineno or s.lineno)]
    else:
        roots = [s for s in tree.body if top in _top_level_names(s)]
    # Follow names from the roots to the top-level statements that bind them, within this file.
    binders: dict[str, list[ast.stmt]] = {}
    for s in tree.body:
        for n in _top_level_names(s):
            binders.setdefault(n, []).append(s)
    reached: list[ast.stmt] = []
    todo = list(roots)
    while todo:
        s = todo.pop()
        if any(s is r for r in reached):
            continue
        reached.append(s)
        for node in ast.walk(s):
            if isinstance(node, ast.Name):
                todo.extend(binders.get(node.id, []))
    module_imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]  # run on import
    module = _module_name(path) if path.is_relative_to(PACKAGE_DIR) else path.stem
    code.modules |= _imports_in(reached + module_imports, module, path.name == "__init__.py")
    dumps = code.entries.setdefault(path, [])
    for s in sorted(reached, key=lambda s: s.lineno):
        if not isinstance(s, (ast.Import, ast.ImportFrom)) and ast.dump(s) not in dumps:
            dumps.append(ast.dump(s))


def stage_code(callables: Iterable[Callable[..., Any] | None]) -> StageCode:
    """The code that `callables` (a stage's run/check/output) reach; see the module docstring."""
    code = StageCode({}, set(), [])
    seen: set[int] = set()
    for fn in callables:
        _collect(fn, code, seen)
    code.modules = module_closure(code.modules)
    return code


def code_hash(code: StageCode) -> str:
    """sha256 of the reached statements, the imported modules' syntax trees and their data files."""
    h = hashlib.sha256()
    for path, dumps in sorted(code.entries.items()):
        h.update(f"entry {path.name}\0".encode() + "\n".join(dumps).encode() + b"\n")
    entry_files = set(code.entries)
    for path in code.files():
        rel = path.relative_to(PACKAGE_DIR).as_posix() if path.is_relative_to(PACKAGE_DIR) else path.name
        if path.suffix == ".py":
            # An entry file counts only for the statements the stage reaches, unless something imports it.
            imported = path.is_relative_to(PACKAGE_DIR) and _module_name(path) in code.modules
            if path not in entry_files or imported:
                h.update(f"module {rel}\0{summary(path)['code']}\n".encode())
        else:
            h.update(f"data {rel}\0".encode() + path.read_bytes() + b"\n")
    h.update(("values\0" + "\n".join(code.values) + f"\npython {sys.version_info[:2]}").encode())
    return h.hexdigest()
