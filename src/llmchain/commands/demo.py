"""`llmchain demo`: the quickstart recipe on the corpus that ships with the package, then what to do next."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.commands.run import rich_console, run_and_report, short_path


def demo(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the quickstart run goes."),
    force: bool = typer.Option(False, "--force", help="Run every stage again."),
) -> None:
    """Run the `quickstart` recipe (data → tokenizer → pretrain → eval → model card) on the bundled corpus."""
    console = rich_console()
    console.print("[bold]llmchain demo[/]: the quickstart recipe on the Shakespeare corpus that ships with the "
                  "package (about 5 minutes of training on 2 CPU cores).")  # fmt: skip
    runner, _ = run_and_report("quickstart", runs_dir=runs_dir, force=force)
    def say(text: str) -> None:  # soft wrap: paths and commands stay on one line, ready to copy
        console.print(text, soft_wrap=True)

    card = runner.run_dir / "report" / "report.md"
    model = short_path(runner.output_of("pretrain"))
    if card.is_file():
        say(f"\nModel card: [bold]{short_path(card)}[/] (also report.html beside it)")
    verdict = _baseline_line(runner.run_dir / "eval" / "report.json")
    if verdict:
        say(f"Validation: {verdict}")
    gguf = sorted((runner.run_dir / "export").glob("*.gguf"))
    say(f"Model:      {model}" + (f"   GGUF: {short_path(gguf[0])}" if gguf else ""))
    say("\nServe it and chat with it:")
    say(f"  llmchain serve {model}    # OpenAI-compatible API + chat page at http://127.0.0.1:8000")
    say(f"  llmchain chat {model}     # or chat in this terminal")
    if gguf:
        say(f"  llama-cli -m {short_path(gguf[0])} -p 'ROMEO:' -n 100   # the same model in llama.cpp")


def _baseline_line(report_json: Path) -> str | None:
    import json

    try:
        from llmchain.eval.lm import summary_line

        return summary_line(json.loads(report_json.read_text(encoding="utf-8"))) or None
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None
