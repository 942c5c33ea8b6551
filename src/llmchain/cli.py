"""The `llmchain` command line: the command table below maps every command to its function.

A command `NAME` lives in `llmchain/commands/NAME.py` (a group's sub-commands, `data prepare`, in
the group's module, `commands/data.py`). Commands are thin: parse, call the stage, print. Heavy
imports (torch, transformers) happen inside the commands, so `llmchain --help` is instant. A
`UserError` anywhere becomes one line on stderr and exit code 2.

To add a command: write the function in its module and add one row to COMMANDS (and, for a new
group, one entry to GROUPS).
"""

from __future__ import annotations

import os
import sys

import click
import typer

try:  # typer ≥ 0.25 carries its own copy of click
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover
    _TyperClickException = click.ClickException

from llmchain import __version__
from llmchain.errors import UserError

app = typer.Typer(
    name="llmchain",
    help="The whole value chain of a language model: data → tokenizer → pretrain → finetune → eval → serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmchain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """llmchain: build, evaluate and serve your own language model on your own data."""


# Command groups: name → help.
GROUPS = {
    "data": "Raw text → clean, deduplicated documents; documents → token shards.",
    "tokenizer": "Train a byte-level BPE tokenizer (HF-loadable, with a chat template).",
    "finetune": "Adapt a base model: chat/instruction SFT (full or LoRA) or text classification.",
    "eval": "Evaluate a model beside classical baselines (n-gram, Naive Bayes, TF-IDF+LR, lead).",
    "privacy": "What a trained model memorised (canaries planted by `data prepare --canaries`).",
    "recipes": "List the built-in recipes, or print one to copy (`recipes show NAME`).",
    "arena": "Blind side-by-side battles between models, votes, and a Bradley-Terry leaderboard.",
    "explain": "Token attributions (integrated gradients, occlusion) as HTML heatmaps, and their faithfulness.",
}

# The command table, in the order of the chain: command → (module in llmchain.commands, function).
# A bare group name maps to the group's own action (`llmchain recipes` lists them).
COMMANDS = {
    "data prepare": ("data", "prepare"),
    "data pack": ("data", "pack"),
    "tokenizer train": ("tokenizer", "train"),
    "presets": ("presets", "presets"),
    "pretrain": ("pretrain", "pretrain"),
    "generate": ("generate", "generate"),
    "finetune sft": ("finetune", "sft"),
    "finetune classify": ("finetune", "classify"),
    "predict": ("predict", "predict"),
    "eval lm": ("eval", "lm"),
    "eval classify": ("eval", "classify"),
    "eval generate": ("eval", "generate"),
    "report": ("report", "report"),
    "privacy audit": ("privacy", "audit"),
    "index": ("index", "index"),
    "search": ("search", "search"),
    "eval retrieval": ("eval", "retrieval"),
    "serve": ("serve", "serve"),
    "chat": ("chat", "chat"),
    "arena": ("arena", "arena"),
    "arena results": ("arena", "results"),
    "explain classify": ("explain", "classify"),
    "explain lm": ("explain", "lm"),
    "explain faithfulness": ("explain", "faithfulness"),
    "export": ("export", "export"),
    "run": ("run", "run"),
    "recipes": ("recipes", "list_recipes"),
    "recipes show": ("recipes", "show"),
    "demo": ("demo", "demo"),
}


def _register() -> None:
    import importlib

    groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
    for command, (module, function) in COMMANDS.items():
        fn = getattr(importlib.import_module(f"llmchain.commands.{module}"), function)
        group, _, name = command.partition(" ")
        if group not in groups:
            app.command(command)(fn)
        elif not name:  # the group's own action
            groups[group].info.no_args_is_help = False
            groups[group].callback(invoke_without_command=True)(fn)
        else:
            groups[group].command(name)(fn)
    for name, group in groups.items():
        app.add_typer(group, name=name)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (also used by tests)."""
    try:
        # Without standalone mode, click hands back `typer.Exit(n)`'s code instead of exiting.
        rc = app(args=argv, prog_name="llmchain", standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except (typer.Exit, click.exceptions.Exit) as e:
        return e.exit_code
    except (_TyperClickException, click.ClickException) as e:
        e.show()
        return e.exit_code
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        # `llmchain ... | head`: quietly stop writing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
