"""Canaries and the privacy audit: planted exactly as recorded; an unseen canary's exposure is near 0; a
model fine-tuned on a canary extracts it; the audit's report reaches the model card; bad flags → exit 2.

Tiny everything: the first 40 kB of the bundled Shakespeare, a 300-token BPE, the nano Llama.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli

CORPUS = REPO / "src" / "llmchain" / "recipes" / "corpus" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    p.write_text(CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, text) -> Path:
    from llmchain.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer(text, 300, out)
    return out


def _random_model(tmp: Path, tokenizer: Path) -> Path:
    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama
    from llmchain.model.presets import preset_config

    torch.manual_seed(0)
    model = Llama(preset_config("nano", 300, eos_token_id=0, bos_token_id=0))
    return save_model(model, tmp / "model", tokenizer_dir=tokenizer)


def _prepare(text: Path, out: Path, steps: str, *extra: str) -> dict:
    code, _, err = run_cli(
        "data",
        "prepare",
        str(text),
        "-o",
        str(out),
        "--steps",
        steps,
        "--text-unit",
        "paragraph",
        "-q",
        *extra,
    )
    assert code == 0, err
    return json.loads((out / "canaries.json").read_text(encoding="utf-8"))


def _documents(out: Path) -> list[dict]:
    docs = []
    for part in sorted((out / "documents").glob("part-*.jsonl.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    return docs


def test_canaries_are_planted_exactly_as_recorded(tmp_path, text):
    rec = _prepare(text, tmp_path / "plain", "clean,length", "--canaries", "2", "--canary-copies", "1,3")
    docs = _documents(tmp_path / "plain")
    rows = rec["canaries"]
    assert [r["copies"] for r in rows] == [1, 1, 3, 3, 0, 0]  # 2 per copy count + 2 unplanted controls
    assert {r["language"] for r in rows} == {"en", "zh"}
    assert len({r["prefix"] for r in rows}) == len(
        rows
    )  # distinct prefixes: greedy decoding tells them apart
    for r in rows:
        assert (
            len(r["secret"]) == 6
            and r["secret"].isdigit()
            and r["text"] == r["prefix"] + r["secret"] + r["suffix"]
        )
        assert r["planted"] == r["kept"] == len(r["placements"]) == r["copies"]
        # without dedup the output order is the planting order: each copy is where the record says
        for p in r["placements"]:
            assert docs[p["position"]]["id"] == p["id"] and docs[p["position"]]["text"] == r["text"]
        assert sum(r["secret"] in d["text"] for d in docs) == r["copies"]  # nowhere else (controls: nowhere)
    # nothing in a copy's fields gives it away
    planted = {p["id"] for r in rows for p in r["placements"]}
    for d in docs:
        if d["id"] in planted:
            assert d["meta"] == {} and "canar" not in json.dumps(d).lower()
    stats = json.loads((tmp_path / "plain" / "stats.json").read_text())
    step = next(s for s in stats["steps"] if s["name"] == "canaries")
    assert step["counters"]["added"] == 8 and step["out"] - step["in"] == 8
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["canaries"]["copies_planted"] == 8 and "secret" not in json.dumps(manifest["canaries"])

    # the same seed plants the same canaries at the same places; exact dedup keeps one copy of each
    rec2 = _prepare(
        text, tmp_path / "dedup", "clean,length,exact_dedup", "--canaries", "2", "--canary-copies", "1,3"
    )
    docs2 = _documents(tmp_path / "dedup")
    for r, r2 in zip(rows, rec2["canaries"], strict=True):
        assert (r["secret"], r["prefix"]) == (r2["secret"], r2["prefix"])
        assert [p["position"] for p in r["placements"]] == [p["position"] for p in r2["placements"]]
        assert r2["kept"] == min(1, r["copies"]) == sum(r["secret"] in d["text"] for d in docs2)
        assert all(p["removed_by"] in (None, "exact_dedup") for p in r2["placements"])


def test_bad_flags_are_one_line_and_exit_2(tmp_path, text):
    for flags in (
        ["--canary-copies", "0,x"],
        ["--canary-copies", "1,1"],
        ["--canaries", "-1"],
        ["--canaries", "2", "--canary-copies", "10,"],
    ):
        code, _, err = run_cli("data", "prepare", str(text), "-o", str(tmp_path / "d"), "-q", *flags)
        assert code == 2, (flags, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    for args in ([str(tmp_path / "missing")], [str(tmp_path)], [str(tmp_path), "--samples", "5"]):
        code, _, err = run_cli("privacy", "audit", *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err


def _canaries(count: int, copies: list[int], length: int = 2, seed: int = 0):
    from llmchain.config import CanaryConfig
    from llmchain.data.canaries import make_canaries

    return make_canaries(CanaryConfig(count=count, copies=copies, secret_length=length, seed=seed))


def test_exposure_of_unseen_canaries_is_near_zero(tmp_path, tokenizer):
    """A model that never saw a secret ranks it uniformly among |R|: exposure log2|R| − log2 rank has
    mean ≈ 1.4 bits (|R| = 100 two-digit secrets) and P(≥ t bits) ≈ 2^−t. Tolerance: the mean over 8
    unseen canaries is below 3 bits (a memorised secret scores log2 100 ≈ 6.6)."""
    from llmchain.model.io import load_model
    from llmchain.privacy import PrivacyAuditConfig, exposure
    from llmchain.tokenizer import load_tokenizer

    model_dir = _random_model(tmp_path, tokenizer)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    controls = [c for c in _canaries(8, [1]) if c.copies == 0]
    cfg = PrivacyAuditConfig()
    rng = np.random.default_rng(0)
    got = [exposure(model, tok, c, cfg, rng) for c in controls]
    assert all(g["method"] == "exact" and g["space"] == 100 and 1 <= g["rank"] <= 100 for g in got)
    values = [g["exposure"] for g in got]
    assert np.mean(values) < 3.0, values
    assert all(0 <= v <= math.log2(100) for v in values)


def test_model_finetuned_on_the_canary_alone_extracts_it(tmp_path, tokenizer):
    from llmchain.model.io import load_model
    from llmchain.privacy import PrivacyAuditConfig, exposure, extract
    from llmchain.tokenizer import load_tokenizer

    model_dir = _random_model(tmp_path, tokenizer)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    canary, other = _canaries(1, [1], seed=3)[:2]
    ids = torch.tensor([[0, *tok(canary.text, add_special_tokens=False)["input_ids"]]])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):  # a few dozen steps on the canary sentence alone
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    got = extract(model, tok, canary)
    assert got["extracted"], got
    assert not extract(model, tok, other)["extracted"]  # another canary's secret was never seen
    ex = exposure(model, tok, canary, PrivacyAuditConfig(), np.random.default_rng(0))
    assert ex["rank"] == 1 and ex["exposure"] == pytest.approx(math.log2(100))
    # the extrapolation (here on a space small enough to rank exactly) also puts it at the top
    fit = exposure(
        model, tok, canary, PrivacyAuditConfig(exact_max=10, samples=300), np.random.default_rng(0)
    )
    assert fit["method"] == "skew-normal" and fit["exposure"] > math.log2(100) - 1


def test_audit_report_reaches_the_model_card(tmp_path, text, tokenizer):
    from llmchain.data.pack import pack_documents
    from llmchain.eval.report import build_card

    _prepare(text, tmp_path / "data", "clean,length,near_dedup", "--canaries", "1", "--canary-copies", "1,4")
    pack_documents(tmp_path / "data", tokenizer, tmp_path / "shards", val_fraction=0.2, split_by="documents")
    model_dir = _random_model(tmp_path, tokenizer)
    code, out, err = run_cli(
        "privacy",
        "audit",
        str(model_dir),
        "--data",
        str(tmp_path / "data"),
        "--shards",
        str(tmp_path / "shards"),
        "-o",
        str(tmp_path / "audit"),
        "--samples",
        "200",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["kind"] == "eval-privacy" and (tmp_path / "audit" / report["plots"][0]).is_file()
    assert [g["copies planted"] for g in report["systems"]] == [0, 1, 4]
    four = next(g for g in report["systems"] if g["copies planted"] == 4)
    assert four["copies kept (mean)"] == 1  # near dedup left one of the four identical copies
    assert 0 <= report["membership_inference"]["auc"] <= 1
    assert "exposure mean (bits)" in out and "AUC" in out
    card_dir, _ = build_card(model_dir, tmp_path / "card", extra_evals=[tmp_path / "audit"])
    md = (card_dir / "report.md").read_text()
    assert "privacy audit" in md and "exposure mean (bits)" in md


def test_privacy_recipe_is_valid_and_its_audit_config_is_checked(tmp_path):
    from llmchain.errors import UserError
    from llmchain.recipe import load_recipe

    recipe = load_recipe("privacy")
    stages = {s.name: s for s in recipe.stages}
    assert stages["privacy_audit"].type.name == "privacy_audit"
    assert stages["data"].config["canaries"]["copies"] == [1, 10, 100]
    code, out, err = run_cli("run", "privacy", "--dry-run", "--runs-dir", str(tmp_path))
    assert code == 0 and "privacy_audit" in out, err
    with pytest.raises(UserError, match="samples"):
        load_recipe("privacy", overrides=["privacy_audit.samples=5"])
