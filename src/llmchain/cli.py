"""The `llmchain` command line: one sub-command per stage, thin — parse, call, print.

Stage code lives in the stage packages; each `llmchain.commands.<stage>` module registers its
commands on the app. Heavy imports (torch, transformers) happen inside the commands so that
`llmchain --help` is instant. A `UserError` anywhere becomes one line on stderr and exit code 2.
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


def _register() -> None:
    import importlib

    for name in ("data", "tokenizer", "train", "finetune", "evaluate", "serve", "recipe", "privacy"):
        try:
            module = importlib.import_module(f"llmchain.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"llmchain.commands.{name}":
                continue  # stage not built yet
            raise
        module.register(app)


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
