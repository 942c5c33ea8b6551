import subprocess
import sys

import llmchain
from conftest import run_cli


def test_version():
    code, out, _ = run_cli("--version")
    assert code == 0
    assert out.strip() == f"llmchain {llmchain.__version__}"


def test_help_lists_stages():
    proc = subprocess.run([sys.executable, "-m", "llmchain", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "Usage" in proc.stdout


def test_unknown_command_exits_2():
    code, _, _ = run_cli("no-such-command")
    assert code == 2


def test_exit_code_of_a_command_is_returned():
    import typer

    from llmchain.cli import app, main

    @app.command("_exit-test", hidden=True)
    def _exit_test() -> None:
        raise typer.Exit(3)

    try:
        assert main(["_exit-test"]) == 3
    finally:
        app.registered_commands = [c for c in app.registered_commands if c.name != "_exit-test"]
