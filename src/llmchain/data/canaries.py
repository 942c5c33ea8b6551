"""Secret-sharer canaries (Carlini et al. 2019, "The Secret Sharer"): planted by `data prepare`, measured
by `llmchain privacy audit`.

A canary is a fixed template with a per-canary key and a random secret, e.g. "The access code for locker
QJXB is 482913." (English) or "QJXB号储物柜的密码是482913。" (Chinese). The key makes every canary's
prefix distinct, so greedy decoding from one prefix can only ever extract that canary's secret.

Planting, deterministic from the seed and the shard plan:

1. `make_canaries`: `count` canaries for each copy count, plus `count` controls that are never planted
   (their exposure is what an unseen secret scores: the audit's reference).
2. `assign_copies`: every copy goes to a shard with probability proportional to the shard's bytes, so
   the copies are spread over the corpus.
3. `plant` (in the shard's worker, after the per-document steps and before dedup, so a filter cannot drop
   a copy and dedup can): each copy is a document of its own, inserted at a uniform random position
   among the shard's documents.
4. `write_record`: OUT/canaries.json holds the secrets and where every copy went (shard, position, id,
   whether dedup kept it). Nothing about a canary is written into the documents' fields: a copy's id is
   an opaque hash and its `meta` is empty, like any other document's.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmchain.artifacts import atomic_write_json
from llmchain.data.steps import Document, StepStats
from llmchain.errors import UserError

CANARIES_JSON = "canaries.json"
ALPHABETS = {
    "digits": "0123456789",
    "letters": "abcdefghijklmnopqrstuvwxyz",
    "alnum": "0123456789abcdefghijklmnopqrstuvwxyz",
}
# (prefix, suffix): the secret goes between them; {key} tells the canaries apart
TEMPLATES = {"en": ("The access code for locker {key} is ", "."), "zh": ("{key}号储物柜的密码是", "。")}
_KEY_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I/O: they read as digits


@dataclass
class Canary:
    """One canary: `copies` = 0 for a control that is never planted."""

    id: str
    language: str
    copies: int
    key: str
    secret: str
    prefix: str
    suffix: str
    alphabet: str
    secret_length: int

    @property
    def text(self) -> str:
        return self.prefix + self.secret + self.suffix

    def with_secret(self, secret: str) -> str:
        """The canary's sentence with another secret (a candidate from the randomness space)."""
        return self.prefix + secret + self.suffix


def parse_copies(text: str) -> list[int]:
    """`--canary-copies 1,10,100` → [1, 10, 100]; anything else is a one-line UserError."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts) or len(set(parts)) != len(parts):
        raise UserError(
            f"--canary-copies {text!r}: expected distinct whole numbers ≥ 1 separated by commas, "
            "e.g. 1,10,100"
        )
    return [int(p) for p in parts]


def space_size(alphabet: str, secret_length: int) -> int:
    """|R|: the number of possible secrets."""
    return len(ALPHABETS[alphabet]) ** secret_length


def make_canaries(cfg: Any) -> list[Canary]:
    """The canaries of a CanaryConfig: `count` per copy count, then `count` controls (copies 0)."""
    rng = np.random.default_rng([cfg.seed, 0xCA4A])
    alphabet = ALPHABETS[cfg.alphabet]
    out: list[Canary] = []
    keys: set[str] = set()
    for copies in [*cfg.copies, 0]:
        for _ in range(cfg.count):
            key = ""
            while not key or key in keys:
                key = "".join(rng.choice(list(_KEY_LETTERS), 4))
            keys.add(key)
            lang = cfg.languages[len(out) % len(cfg.languages)]
            prefix, suffix = TEMPLATES[lang]
            secret = "".join(rng.choice(list(alphabet), cfg.secret_length))
            out.append(
                Canary(
                    f"c{len(out):03d}",
                    lang,
                    copies,
                    key,
                    secret,
                    prefix.format(key=key),
                    suffix,
                    cfg.alphabet,
                    cfg.secret_length,
                )
            )
    return out


def assign_copies(canaries: list[Canary], shard_bytes: dict[int, int], seed: int) -> dict[int, list[dict]]:
    """{shard index: [{"canary", "copy", "text"}]}: each copy to a shard with probability ∝ its bytes."""
    index = sorted(shard_bytes)
    if not index:
        raise UserError("--canaries: the inputs hold no documents to plant canaries among")
    weights = np.array([max(1, shard_bytes[i]) for i in index], dtype=float)
    rng = np.random.default_rng([seed, 0x5A4D])
    plan: dict[int, list[dict]] = {i: [] for i in index}
    for c in canaries:
        for j, s in enumerate(rng.choice(len(index), size=c.copies, p=weights / weights.sum()).tolist()):
            plan[index[s]].append({"canary": c.id, "copy": j, "text": c.text})
    return plan


def copy_id(seed: int, canary: str, copy: int) -> str:
    """An opaque document id: nothing in it tells a reader (or the model) that this is a canary."""
    return "doc-" + hashlib.sha256(f"{seed}:{canary}:{copy}".encode()).hexdigest()[:16]


def plant(
    docs: list[Document], copies: list[dict], seed: int, shard: int
) -> tuple[list[Document], list[dict], dict[str, Any]]:
    """Insert the shard's copies at uniform random positions among `docs`.

    Returns (documents, placements [{"canary", "copy", "id", "shard", "position"}], step stats). The
    position is the copy's index in the returned list, which is the shard's order going into dedup.
    """
    rng = np.random.default_rng([seed, shard, 0x9A47])
    slots = np.sort(rng.integers(0, len(docs) + 1, size=len(copies))).tolist()
    out: list[Document] = []
    placements: list[dict] = []
    k = 0
    for i in range(len(docs) + 1):
        while k < len(copies) and slots[k] == i:
            c = copies[k]
            cid = copy_id(seed, c["canary"], c["copy"])
            placements.append(
                {"canary": c["canary"], "copy": c["copy"], "id": cid, "shard": shard, "position": len(out)}
            )
            out.append(Document(cid, c["text"], "planted"))
            k += 1
        if i < len(docs):
            out.append(docs[i])
    stats = StepStats("canaries", docs_in=len(docs), docs_out=len(out))
    stats.counters["added"] = len(copies)  # the pipeline's bookkeeping counts documents a step adds
    return out, placements, stats.to_json()


def write_record(
    out: Path, cfg: Any, canaries: list[Canary], placements: list[dict], removed: dict[int, dict[str, tuple]]
) -> dict[str, Any]:
    """Write OUT/canaries.json (secrets + where each copy went and whether dedup kept it); returns the
    summary recorded in the manifest (no secrets)."""
    by_canary: dict[str, list[dict]] = {c.id: [] for c in canaries}
    for p in sorted(placements, key=lambda p: (p["canary"], p["copy"])):
        hit = removed.get(p["shard"], {}).get(str(p["position"]))
        by_canary[p["canary"]].append({**p, "kept": hit is None, "removed_by": hit[0] if hit else None})
    rows = []
    for c in canaries:
        placed = by_canary[c.id]
        rows.append(
            {
                **asdict(c),
                "text": c.text,
                "planted": len(placed),
                "kept": sum(p["kept"] for p in placed),
                "placements": placed,
            }
        )
    atomic_write_json(
        out / CANARIES_JSON,
        {
            "kind": "canaries",
            "config": cfg.model_dump(mode="json"),
            "space_size": space_size(cfg.alphabet, cfg.secret_length),
            "canaries": rows,
        },
    )
    return {
        "file": CANARIES_JSON,
        "canaries": len(canaries),
        "copies_planted": sum(r["planted"] for r in rows),
        "copies_kept": sum(r["kept"] for r in rows),
    }


def read_record(data_dir: str | Path) -> dict[str, Any]:
    """The canaries.json of a documents dir; UserError when the run planted none."""
    import json

    path = Path(data_dir) / CANARIES_JSON
    if not path.is_file():
        raise UserError(
            f"{data_dir}: no {CANARIES_JSON} (prepare the data with `llmchain data prepare --canaries N`)"
        )
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("canaries"), list):
        raise UserError(f"{path}: field 'canaries' is missing; was it written by `llmchain data prepare`?")
    return rec


def canary_from_record(row: dict[str, Any]) -> Canary:
    return Canary(**{k: row[k] for k in Canary.__dataclass_fields__})
