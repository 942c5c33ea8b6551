"""Shared fixtures. `shared_data` is ../shared/data (real public data sets, see its README).

A user's clone has no ../shared: tests that need it skip with the reason. Under CI=true its absence
fails loudly instead (`skip_or_fail`, also used for a missing C compiler or browser), so CI can never
pass by skipping everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMCHAIN_SHARED_DATA", REPO.parent / "shared" / "data"))


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose prerequisite this machine lacks — but fail under CI=true, where every
    prerequisite is installed, so CI can never pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        skip_or_fail(f"needs ../shared/data beside the clone (not found at {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing may reach a model hub at run time; make any such attempt fail fast instead of hanging.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `llmchain ARGS` in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from llmchain.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
