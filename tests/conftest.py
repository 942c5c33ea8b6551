"""Shared fixtures. `shared_data` is ../shared/data (real public data sets, see its README).

A user's clone has no ../shared: tests that need it skip with the reason. Under CI=true its absence
fails loudly instead (`skip_or_fail`, also used for a missing C compiler or browser), so CI can never
pass by skipping everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
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


CHROMIUM = "/usr/bin/chromium"  # Debian's; .ci/run installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (the page tests of the server and the arena)."""
    import shutil

    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        skip_or_fail(f"needs Debian chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


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


@contextlib.contextmanager
def sigterm_at(batches: type, step: int) -> Iterator[None]:
    """Within the block, fetching batch `step` from a `batches` (a class with `get_batch(step, rank,
    world_size)`) sends this process SIGTERM, as `kill PID` would: the loop finishes that step,
    checkpoints and stops."""
    original = batches.get_batch

    def get_batch(self, s: int, rank: int, world_size: int):
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, s, rank, world_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batches, "get_batch", get_batch)
        yield


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `llmchain ARGS` in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from llmchain.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def fresh_runtime():
    """The training loop's runtime (device, precision, process group) is per process: a test that trains
    starts and ends without one. Runs use threads=1 (robust when other jobs share the cores): torch's
    thread count is restored after. A module opts in with
    `pytestmark = pytest.mark.usefixtures("fresh_runtime")`."""
    import torch

    from llmchain.train.distributed import teardown_runtime

    threads = torch.get_num_threads()
    teardown_runtime()
    yield
    teardown_runtime()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Build (once per session for the same arguments) an HF model dir: llmchain's BPE tokenizer of
    `vocab` tokens trained on `corpus` (text, or a file as it is), and a seeded random Llama — the nano
    preset with `config` overrides, of `model_vocab` (default `vocab`) embeddings.
    Call it: `tiny_model_dir(corpus, vocab, model_vocab=None, seed=0, **config) -> Path`."""
    built: dict[tuple, Path] = {}

    def build(corpus: str | Path, vocab: int, model_vocab: int | None = None, seed: int = 0, **config):
        import torch

        from llmchain.model.io import save_model
        from llmchain.model.llama import Llama
        from llmchain.model.presets import preset_config
        from llmchain.tokenizer import train_tokenizer

        key = (str(corpus) if isinstance(corpus, Path) else hash(corpus), vocab, model_vocab, seed,
               tuple(sorted(config.items())))  # fmt: skip
        if key not in built:
            root = tmp_path_factory.mktemp("tiny-model")
            if not isinstance(corpus, Path):
                (root / "corpus.txt").write_text(corpus, encoding="utf-8")
                corpus = root / "corpus.txt"
            train_tokenizer(corpus, vocab, root / "tok")
            torch.manual_seed(seed)
            model = Llama(preset_config("nano", model_vocab or vocab, **config))
            built[key] = save_model(model, root / "model", tokenizer_dir=root / "tok")
        return built[key]

    return build


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory, shared_data):
    """The serve tests' model (serve_fixtures.make_model_dir: a tiny random Llama whose greedy text
    varies, and a byte-level BPE on tinyshakespeare), built once per session for each `chat_template`.
    Call it: `serve_model_dir(chat_template=True) -> Path`."""
    from serve_fixtures import make_model_dir

    built: dict[bool, Path] = {}

    def build(chat_template: bool = True) -> Path:
        if chat_template not in built:
            root = tmp_path_factory.mktemp("serve-model")
            corpus = shared_data / "tinyshakespeare" / "input.txt"
            built[chat_template] = make_model_dir(root, corpus, chat_template=chat_template)
        return built[chat_template]

    return build
