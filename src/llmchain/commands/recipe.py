"""`llmchain run | recipes | demo | export`: whole chains from one YAML file, and export to HF / GGUF."""

from __future__ import annotations

from pathlib import Path

import typer

recipes_app = typer.Typer(help="List the built-in recipes, or print one to copy (`recipes show NAME`).")


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _print_plan(console, runner, plan, *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("stage", "type", "status", "time", "output / numbers"):
        table.add_column(col)
    for s in plan:
        numbers = ", ".join(f"{k} {v}" for k, v in list(s.summary.items())[:4])
        if s.run:
            status = "[green]ran[/]" if s.seconds else f"[yellow]will run[/]: {s.reason}"
        else:
            status = f"[dim]{s.reason}[/]"
        table.add_row(s.stage.name, s.stage.type.name, status, f"{s.seconds:.1f}s" if s.seconds else "",
                      numbers or _short(runner.output_of(s.stage.name)))  # fmt: skip
    console.print(table)


def _short(path: Path) -> str:
    import os

    rel = os.path.relpath(path)
    return rel if not rel.startswith("../..") else str(path)


def run_command(
    recipe: str = typer.Argument(..., help="A built-in recipe name (see `llmchain recipes`) or a YAML file."),
    only: str | None = typer.Option(None, "--only", help="Run just this stage (its inputs must exist)."),
    start: str | None = typer.Option(None, "--from", help="Re-run this stage and every stage after it."),
    until: str | None = typer.Option(None, "--until", help="Stop after this stage (run the part up to it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run and why; run nothing."),
    force: bool = typer.Option(False, "--force", help="Re-run every selected stage even when up to date."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Stages write into RUNS_DIR/NAME/STAGE/."),
    overrides: list[str] | None = typer.Option(None, "--set", help="STAGE.KEY=VALUE config override (repeatable)."),
    inputs: list[str] | None = typer.Option(None, "--input", help="STAGE.ROLE=PATH input override (repeatable)."),
) -> None:
    """Run a recipe's stages in order into runs/NAME/STAGE/, skipping those already up to date."""
    run_and_report(recipe, only=only, start=start, until=until, dry_run=dry_run, force=force, runs_dir=runs_dir,
                   overrides=overrides, inputs=inputs)  # fmt: skip


def run_and_report(recipe: str, *, dry_run: bool = False, **kwargs):
    from llmchain.recipe import run_recipe

    console = _console()
    runner, plan = run_recipe(recipe, dry_run=dry_run, log=console.print, **kwargs)
    ran = [s for s in plan if s.run and s.seconds]
    where = runner.run_dir
    if dry_run:
        _print_plan(console, runner, plan, title=f"{runner.recipe.name}: plan (dry run) — {where}")
    elif not ran:
        checked = [s for s in plan if s.reason != "not selected"]
        which = f"all {len(plan)} stages" if len(checked) == len(plan) else f"the {len(checked)} selected stage(s)"
        console.print(f"Nothing to do: {which} of '{runner.recipe.name}' are up to date ({where}).")
    else:
        total = sum(s.seconds for s in ran)
        _print_plan(console, runner, plan, title=f"{runner.recipe.name}: {len(ran)} stage(s) ran in {total:.0f}s")
    return runner, plan


@recipes_app.callback(invoke_without_command=True)
def recipes_list(ctx: typer.Context) -> None:
    """List the built-in recipes."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from llmchain.config import read_yaml
    from llmchain.recipe import builtin_recipes

    table = Table(title="built-in recipes (llmchain recipes show NAME; llmchain run NAME)", title_justify="left")
    for col in ("name", "stages", "description"):
        table.add_column(col)
    for name, path in builtin_recipes().items():
        data = read_yaml(path)
        first = str(data.get("description", "")).strip().split(": ")[0].split(". ")[0]
        table.add_row(name, " → ".join(data.get("stages") or {}), first)
    _console().print(table)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="A built-in recipe name.")) -> None:
    """Print a built-in recipe's YAML (copy it, edit it, run it with `llmchain run FILE`)."""
    from llmchain.recipe import resolve_recipe_path

    typer.echo(resolve_recipe_path(name).read_text(encoding="utf-8"), nl=False)


def demo_command(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the quickstart run goes."),
    force: bool = typer.Option(False, "--force", help="Run every stage again."),
) -> None:
    """Run the `quickstart` recipe (data → tokenizer → pretrain → eval → model card) on the bundled corpus."""
    console = _console()
    console.print("[bold]llmchain demo[/]: the quickstart recipe on the Shakespeare corpus that ships with the "
                  "package (about 5 minutes of training on 2 CPU cores).")  # fmt: skip
    runner, _ = run_and_report("quickstart", runs_dir=runs_dir, force=force)
    def say(text: str) -> None:  # soft wrap: paths and commands stay on one line, ready to copy
        console.print(text, soft_wrap=True)

    card = runner.run_dir / "report" / "report.md"
    model = _short(runner.output_of("pretrain"))
    if card.is_file():
        say(f"\nModel card: [bold]{_short(card)}[/] (also report.html beside it)")
    verdict = _baseline_line(runner.run_dir / "eval" / "report.json")
    if verdict:
        say(f"Validation: {verdict}")
    gguf = sorted((runner.run_dir / "export").glob("*.gguf"))
    say(f"Model:      {model}" + (f"   GGUF: {_short(gguf[0])}" if gguf else ""))
    say("\nServe it and chat with it:")
    say(f"  llmchain serve {model}    # OpenAI-compatible API + chat page at http://127.0.0.1:8000")
    say(f"  llmchain chat {model}     # or chat in this terminal")
    if gguf:
        say(f"  llama-cli -m {_short(gguf[0])} -p 'ROMEO:' -n 100   # the same model in llama.cpp")


def _baseline_line(report_json: Path) -> str | None:
    import json

    try:
        from llmchain.eval.language_model import summary_line

        return summary_line(json.loads(report_json.read_text(encoding="utf-8"))) or None
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None


def export_command(
    model_dir: Path = typer.Argument(..., help="A model dir (config.json + model.safetensors + tokenizer)."),
    format: str = typer.Option("hf", "--format", "-f", help="hf (transformers, vLLM) or gguf (llama.cpp, Ollama)."),
    dtype: str | None = typer.Option(None, "--dtype", help="hf: f32|f16|bf16 (f32); gguf: f32|f16|q8_0 (f16)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dir (hf) or .gguf file (default: beside)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer dir if MODEL_DIR has none."),
) -> None:
    """Export a model to a clean Hugging Face dir or a GGUF file (checked by reading it back)."""
    from llmchain.model.export import export_model

    summary = export_model(model_dir, out, format=format, dtype=dtype, tokenizer_dir=tokenizer)
    console = _console()
    console.print(f"wrote {summary['path']} ({summary['format']}, {summary['dtype']})")
    if summary["format"] == "gguf":
        console.print(f"  {summary['tensors']} tensors, {summary['tokens']} tokens, {summary['bytes'] / 1e6:.1f} MB; "
                      "read back and checked")  # fmt: skip
        console.print(f"  run it: llama-cli -m {summary['path']} -p 'ROMEO:' -n 64")
    else:
        if not summary.get("tokenizer"):
            console.print("  [yellow]note:[/] no tokenizer files were found; pass --tokenizer DIR for vLLM")
        console.print(f"  load it: AutoModelForCausalLM.from_pretrained('{summary['path']}'); "
                      f"vllm serve {summary['path']}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.add_typer(recipes_app, name="recipes")
    app.command("demo")(demo_command)
    app.command("export")(export_command)
