"""`llmchain arena results`: leaderboard, plot, DPO export; `llmchain arena` refuses bad flags in one line."""

from __future__ import annotations

import json
import sqlite3

import pytest

from llmchain.arena.ratings import simulate_votes
from llmchain.arena.store import ArenaStore
from llmchain.cli import main


def _filled_store(path, n: int = 300) -> ArenaStore:
    """A database with `n` simulated votes (answers name their model), written in one transaction:
    the store's one-transaction-per-write path costs an fsync each, seconds for hundreds."""
    store = ArenaStore(path)
    store.register_models({m: f"/models/{m}" for m in ("big", "mid", "small")})
    votes = simulate_votes({"big": 1.0, "mid": 0.3, "small": -0.5}, n, seed=2)
    with sqlite3.connect(path) as con:
        con.executemany("INSERT INTO battles (id, created, prompt, prompt_source, model_a, model_b, sampling, state, "
                        "answer_a, answer_b) VALUES (?, ?, ?, 'typed', ?, ?, ?, 'ready', ?, ?)",
                        [(f"b{i}", i, f"prompt {i}", v.model_a, v.model_b, json.dumps({"temperature": 0.7}),
                          f"{v.model_a} answer {i}", f"{v.model_b} answer {i}") for i, v in enumerate(votes)])
        con.executemany("INSERT INTO votes (battle_id, winner, created) VALUES (?, ?, ?)",
                        [(f"b{i}", v.winner, i) for i, v in enumerate(votes)])
    return store


def test_results_prints_the_leaderboard_writes_the_plot_and_the_dpo_pairs(tmp_path, capsys):
    store = _filled_store(tmp_path / "arena.sqlite")
    out = tmp_path / "pairs.jsonl"
    rc = main(["arena", "results", "--db", str(store.path), "--bootstrap", "50", "--export-dpo", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    lines = [ln for ln in printed.splitlines() if ln.strip().startswith("│")]
    order = [m for ln in lines[:3] for m in ("big", "mid", "small") if f" {m} " in ln]
    assert order == ["big", "mid", "small"]
    assert "win rate of row over column" in printed and "battles per pair" in printed
    png = tmp_path / "arena-leaderboard.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs = [json.loads(ln) for ln in out.read_text().splitlines()]
    decisive = [v for v in store.votes() if v.winner in ("a", "b")]
    assert len(pairs) == len(decisive) > 0
    for p, v in zip(pairs, decisive, strict=True):
        winner, loser = (v.model_a, v.model_b) if v.winner == "a" else (v.model_b, v.model_a)
        assert p["chosen"].startswith(winner + " answer") and p["rejected"].startswith(loser + " answer")
        assert p["prompt"].startswith("prompt ") and p["chosen_model"] == winner and p["sampling"]["temperature"] == 0.7


def test_results_with_style_control(tmp_path, capsys):
    store = _filled_store(tmp_path / "a.sqlite", n=200)
    rc = main(["arena", "results", "--db", str(store.path), "--bootstrap", "20", "--style-control",
               "--png", str(tmp_path / "p.png")])  # fmt: skip
    assert rc == 0 and "style control (length coefficient" in capsys.readouterr().out
    assert (tmp_path / "p.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["arena", "results", "--db", "{tmp}/missing.sqlite"], "file not found"),
    (["arena", "results", "--db", "{tmp}/empty.sqlite"], "no votes yet"),
    (["arena", "--model", "A={tmp}"], "at least two models"),
    (["arena", "--model", "A={tmp}", "--model", "A={tmp}"], "its own name"),
    (["arena", "--model", "nonsense", "--model", "B={tmp}"], "expected NAME=MODEL_DIR"),
    (["arena", "--model", "A={tmp}", "--model", "B={tmp}", "--prompts", "{tmp}/none.txt"], "file not found"),
    (["arena", "--model", "A={tmp}", "--model", "B={tmp}", "--db", "{tmp}"], "is a directory"),
    (["arena", "--model", "A={tmp}", "--model", "B={tmp}", "--db", "{tmp}/x.sqlite"], "not a model directory"),
])  # fmt: skip
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    ArenaStore(tmp_path / "empty.sqlite")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    if (tmp_path / "x.sqlite").exists():  # a model that failed to load left no name behind
        assert ArenaStore(tmp_path / "x.sqlite").counts()["models"] == 0


def test_prompt_files(tmp_path):
    from llmchain.arena.prompts import read_prompts
    from llmchain.errors import UserError

    (tmp_path / "p.txt").write_text("one\n\ntwo\none\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "p.json").write_text(json.dumps([{"instruction": "Translate", "input": "你好"}, {"prompt": "x"}]))
    assert read_prompts(tmp_path / "p.json") == ["Translate\n\n你好", "x"]
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n{"label": 1}\n')
    with pytest.raises(UserError, match="p.jsonl:2: no prompt field"):
        read_prompts(tmp_path / "p.jsonl")
