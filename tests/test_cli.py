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
