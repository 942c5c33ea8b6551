"""`llmchain arena --model A=... --model B=...`: blind side-by-side battles and votes;
`llmchain arena results`: the Bradley-Terry leaderboard, its plot, and the votes as DPO pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from llmchain.errors import UserError


def arena(
    ctx: typer.Context,
    model: list[str] = typer.Option(None, "--model", "-m", help="NAME=MODEL_DIR (our engine, in-process) or "
                                    "NAME=http://host:port (any OpenAI-compatible server; /v1 and #served-model-name optional); "
                                    "twice or more."),
    prompts: Path = typer.Option(None, help="Prompts to draw from: .txt (one a line), .json or .jsonl "
                                 "(field prompt / instruction / question / text)."),
    db: Path = typer.Option(Path("arena.sqlite"), help="The SQLite file votes, prompts and answers go to."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes the page to the network)."),
    port: int = typer.Option(8100, help="Port."),
    max_tokens: int = typer.Option(256, min=1, help="Answer length limit (tokens), the same for both sides."),
    temperature: float = typer.Option(0.7, min=0.0, max=100.0, help="Sampling temperature for both sides."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling for both sides."),
    seed: int = typer.Option(None, help="Fixed seed for every battle (default: a fresh one per battle, stored)."),
    api_key: str = typer.Option(None, "--api-key", envvar="LLMCHAIN_ARENA_API_KEY",
                                help="Bearer key sent to the URL models."),
    threads: int = typer.Option(1, min=1, help="torch CPU threads for the in-process models."),
) -> None:
    """Serve the arena page: a prompt, two anonymous answers side by side, a vote; names shown after it."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from llmchain.arena.app import ArenaSampling, create_app
    from llmchain.arena.backends import open_backend, parse_model_spec
    from llmchain.arena.prompts import read_prompts
    from llmchain.arena.store import ArenaStore

    specs = [parse_model_spec(s) for s in model or []]
    names = [n for n, _ in specs]
    if len(specs) < 2:
        raise UserError("give at least two models: --model A=MODEL_DIR_OR_URL --model B=...")
    if len(set(names)) != len(names):
        raise UserError(f"--model: each model needs its own name (got {', '.join(names)})")
    if top_p <= 0:
        raise UserError("--top-p must be in (0, 1]")
    prompt_list = read_prompts(prompts) if prompts else []
    store = ArenaStore(db)
    sources = {n: (t if t.startswith(("http://", "https://")) else str(Path(t).resolve())) for n, t in specs}
    backends = {n: open_backend(n, t, api_key=api_key, threads=threads) for n, t in specs}
    store.register_models(sources)  # after loading: a dir that fails to load leaves no name behind
    app = create_app(backends, store, prompt_list, ArenaSampling(max_tokens, temperature, top_p, seed))
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: anyone who can reach it can vote", err=True)
    typer.echo(f"arena of {len(backends)} models at http://{host}:{port}  (votes: {db})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def results(
    db: Path = typer.Option(Path("arena.sqlite"), help="The arena's SQLite file."),
    png: Path = typer.Option(None, help="Where the rating plot goes (default: DB's name + -leaderboard.png)."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples of the votes for the 95 % intervals."),
    style_control: bool = typer.Option(False, "--style-control", help="Rate at equal answer length (length "
                                       "difference as a feature)."),
    l2: float = typer.Option(None, min=0.0, help="Gaussian prior on the strengths (default 1e-4; 0: plain MLE)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    export_dpo: Path = typer.Option(None, "--export-dpo", help="Write the preference pairs (prompt, chosen, "
                                    "rejected) as JSONL."),
) -> None:
    """Print the leaderboard (Bradley-Terry, bootstrap intervals), win rates and votes per pair; plot it."""
    import json

    from llmchain.arena.ratings import DEFAULT_L2, leaderboard
    from llmchain.arena.report import plot_leaderboard, print_leaderboard
    from llmchain.arena.store import ArenaStore
    from llmchain.artifacts import atomic_write_text
    from llmchain.commands.run import rich_console

    if not db.is_file():
        raise UserError(f"--db {db}: file not found")
    store = ArenaStore(db)
    if export_dpo:
        pairs = list(store.preference_pairs())
        atomic_write_text(export_dpo, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        typer.echo(f"{len(pairs)} preference pairs → {export_dpo}")
    votes = store.votes()
    if len({v.model_a for v in votes} | {v.model_b for v in votes}) < 2:
        raise UserError(f"{db}: no votes yet; nothing to rate")
    try:
        lb = leaderboard(votes, bootstrap=bootstrap, l2=DEFAULT_L2 if l2 is None else l2, style=style_control,
                         seed=seed)  # fmt: skip
    except ValueError as e:
        raise UserError(f"{db}: {e}") from None
    print_leaderboard(rich_console(), lb)
    png = png or db.with_name(db.stem + "-leaderboard.png")
    plot_leaderboard(lb, png)
    typer.echo(f"plot → {png}")
