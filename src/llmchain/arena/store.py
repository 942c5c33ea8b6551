"""The arena's SQLite file: models, battles (prompt, both answers, timings, sampling settings), votes.

WAL mode, so the page's readers never block a vote; every write is one short `BEGIN IMMEDIATE`
transaction on its own connection, so concurrent voters (threads or processes) queue on SQLite's
lock (busy timeout) instead of losing a write. The schema version is SQLite's `user_version`;
`MIGRATIONS[i]` takes a file from version i to i+1, and a file from a newer llmchain is refused.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmchain.arena.ratings import Vote
from llmchain.errors import UserError

MIGRATIONS = [
    """
    CREATE TABLE models (
        id TEXT PRIMARY KEY,            -- the name given on the command line (--model NAME=...)
        source TEXT NOT NULL,           -- the model dir (absolute) or the OpenAI-compatible URL
        first_seen REAL NOT NULL
    );
    CREATE TABLE battles (
        id TEXT PRIMARY KEY,            -- unguessable (secrets.token_urlsafe)
        created REAL NOT NULL,
        prompt TEXT NOT NULL,
        prompt_source TEXT NOT NULL CHECK (prompt_source IN ('typed', 'file')),
        model_a TEXT NOT NULL REFERENCES models(id),
        model_b TEXT NOT NULL REFERENCES models(id),
        sampling TEXT NOT NULL,         -- JSON: the sampling settings both sides ran with
        state TEXT NOT NULL CHECK (state IN ('streaming', 'ready', 'failed')),
        answer_a TEXT, answer_b TEXT,
        finish_a TEXT, finish_b TEXT,   -- stop / length / error
        timing TEXT,                    -- JSON: per side ttft_ms, total_ms, tokens
        CHECK (model_a <> model_b)
    );
    CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        battle_id TEXT NOT NULL UNIQUE REFERENCES battles(id),   -- UNIQUE: one vote per battle
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
        created REAL NOT NULL,
        decision_ms REAL                -- from the end of the answers to the vote
    );
    CREATE INDEX battles_created ON battles(created);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class BattleNotFound(LookupError):
    pass


class VoteRejected(ValueError):
    """The battle is not open to a vote (already voted, still streaming, or failed)."""


@dataclass
class Battle:
    id: str
    prompt: str
    model_a: str
    model_b: str
    answer_a: str | None
    answer_b: str | None
    state: str
    sampling: dict[str, Any]
    timing: dict[str, Any] | None
    created: float


class ArenaStore:
    """One arena database. Thread-safe: each operation opens its own connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--db {self.path}: is a directory; give a file name, e.g. arena.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                self._migrate(con)
        except sqlite3.DatabaseError as e:
            raise UserError(f"--db {self.path}: not an arena database ({e})") from None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # autocommit mode (isolation_level=None): transactions are the explicit BEGIN IMMEDIATE below
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=60000")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock later
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _migrate(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"--db {self.path}: schema version {version} was written by a newer llmchain "
                            f"(this one knows up to {SCHEMA_VERSION}); upgrade llmchain")  # fmt: skip
        for v in range(version, SCHEMA_VERSION):
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("PRAGMA user_version").fetchone()[0] == v:  # another process may have done it
                    for stmt in MIGRATIONS[v].split(";"):
                        if stmt.strip():
                            con.execute(stmt)
                    con.execute(f"PRAGMA user_version={v + 1}")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def schema_version(self) -> int:
        with self._connect() as con:
            return con.execute("PRAGMA user_version").fetchone()[0]

    # ---- writes -----------------------------------------------------------------------------
    def register_models(self, sources: dict[str, str]) -> None:
        """Record the served models; UserError when a name already stands for another source here."""
        with self._transaction() as con:
            for name, source in sources.items():
                row = con.execute("SELECT source FROM models WHERE id=?", (name,)).fetchone()
                if row is None:
                    con.execute("INSERT INTO models VALUES (?, ?, ?)", (name, source, time.time()))
                elif row[0] != source:
                    raise UserError(f"--model {name}={source}: in {self.path} the name {name} stands for "
                                    f"{row[0]}; give this model another name")  # fmt: skip

    def create_battle(self, battle_id: str, prompt: str, prompt_source: str, model_a: str, model_b: str,
                      sampling: dict[str, Any]) -> None:  # fmt: skip
        with self._transaction() as con:
            con.execute("INSERT INTO battles (id, created, prompt, prompt_source, model_a, model_b, sampling, state) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, 'streaming')",
                        (battle_id, time.time(), prompt, prompt_source, model_a, model_b, json.dumps(sampling)))

    def finish_battle(self, battle_id: str, answers: tuple[str, str], finish: tuple[str, str],
                      timing: dict[str, Any], failed: bool = False) -> None:  # fmt: skip
        with self._transaction() as con:
            con.execute("UPDATE battles SET answer_a=?, answer_b=?, finish_a=?, finish_b=?, timing=?, state=? "
                        "WHERE id=? AND state='streaming'",
                        (*answers, *finish, json.dumps(timing), "failed" if failed else "ready", battle_id))

    def record_vote(self, battle_id: str, winner: str) -> Battle:
        """Store the vote in one transaction and return the battle (its model names, now revealed).

        BattleNotFound for an unknown id; VoteRejected when the battle was already voted on, is
        still streaming or failed; ValueError for a winner outside a / b / tie / both_bad. Nothing
        is written in any of these cases."""
        if winner not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"winner must be a, b, tie or both_bad, not {winner!r}")
        with self._transaction() as con:
            battle = self._battle(con, battle_id)
            if battle is None:
                raise BattleNotFound(battle_id)
            if battle.state != "ready":
                raise VoteRejected(f"the battle is {battle.state}, not ready for a vote")
            if con.execute("SELECT 1 FROM votes WHERE battle_id=?", (battle_id,)).fetchone():
                raise VoteRejected("this battle already has a vote")
            done = (battle.timing or {}).get("finished_at", battle.created)
            con.execute("INSERT INTO votes (battle_id, winner, created, decision_ms) VALUES (?, ?, ?, ?)",
                        (battle_id, winner, time.time(), round((time.time() - done) * 1e3, 1)))
        return battle

    # ---- reads ------------------------------------------------------------------------------
    @staticmethod
    def _battle(con: sqlite3.Connection, battle_id: str) -> Battle | None:
        row = con.execute("SELECT id, prompt, model_a, model_b, answer_a, answer_b, state, sampling, timing, "
                          "created FROM battles WHERE id=?", (battle_id,)).fetchone()  # fmt: skip
        if row is None:
            return None
        return Battle(*row[:7], sampling=json.loads(row[7]), timing=json.loads(row[8]) if row[8] else None,
                      created=row[9])  # fmt: skip

    def battle(self, battle_id: str) -> Battle | None:
        with self._connect() as con:
            return self._battle(con, battle_id)

    def votes(self) -> list[Vote]:
        """Every vote, oldest first, with the answers' lengths in characters (for style control)."""
        with self._connect() as con:
            rows = con.execute("SELECT b.model_a, b.model_b, v.winner, length(b.answer_a), length(b.answer_b) "
                               "FROM votes v JOIN battles b ON b.id = v.battle_id ORDER BY v.id").fetchall()
        return [Vote(a, b, w, la or 0, lb or 0) for a, b, w, la, lb in rows]

    def preference_pairs(self) -> Iterator[dict[str, Any]]:
        """(prompt, chosen, rejected) of every vote with a winner; ties and both-bad have none."""
        with self._connect() as con:
            rows = con.execute("SELECT b.id, b.prompt, b.model_a, b.model_b, b.answer_a, b.answer_b, v.winner, "
                               "b.sampling FROM votes v JOIN battles b ON b.id = v.battle_id "
                               "WHERE v.winner IN ('a', 'b') ORDER BY v.id").fetchall()  # fmt: skip
        for bid, prompt, ma, mb, aa, ab, winner, sampling in rows:
            chosen, rejected = ((aa, ma), (ab, mb)) if winner == "a" else ((ab, mb), (aa, ma))
            yield {"prompt": prompt, "chosen": chosen[0], "rejected": rejected[0], "chosen_model": chosen[1],
                   "rejected_model": rejected[1], "battle_id": bid, "sampling": json.loads(sampling)}

    def counts(self) -> dict[str, int]:
        with self._connect() as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("models", "battles", "votes")}
