"""eval retrieval: the metrics on hand-made rankings, a perfect-retrieval set, the CLI report."""

from __future__ import annotations

import json
import math

import pytest
from tests.conftest import run_cli

from llmchain.config import IndexConfig
from llmchain.rag.build import build_index
from llmchain.rag.evaluate import Pair, builtin_set, ndcg_at, recall_at, reciprocal_rank, score_rankings


def test_metrics_on_hand_made_rankings():
    ranked, rel = ["a", "b", "c", "d"], {"c", "z"}
    assert recall_at(ranked, rel, 2) == 0.0 and recall_at(ranked, rel, 3) == 0.5
    assert reciprocal_rank(ranked, rel) == pytest.approx(1 / 3)
    assert ndcg_at(ranked, rel, 3) == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert ndcg_at(["c"], {"c"}, 5) == 1.0
    m = score_rankings([["x", "a"], ["b"]], [Pair("q1", {"a"}), Pair("q2", {"b"})], [1, 5])
    assert m == {"recall@1": 0.5, "ndcg@1": 0.5, "recall@5": 1.0, "ndcg@5": pytest.approx((1 / math.log2(3) + 1) / 2),
                 "mrr@5": 0.75}


@pytest.fixture(scope="module")
def animals(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag-eval")
    docs = root / "docs"
    docs.mkdir()
    facts = {"owl": "Owls hunt mice at night with silent wings.", "bee": "Bees collect nectar and make honey.",
             "whale": "Whales are huge mammals that sing in the ocean.", "cactus": "A cactus stores water in its stem.",
             "熊猫": "熊猫主要吃竹子，生活在四川的山林里。"}
    for name, text in facts.items():
        (docs / f"{name}.txt").write_text(text, encoding="utf-8")
    index = root / "index.sqlite"
    build_index([str(docs)], index, IndexConfig(), progress=False)
    queries = root / "queries.jsonl"
    rows = [("nectar honey", "bee.txt"), ("silent wings mice", "owl.txt"), ("mammals ocean sing", "whale.txt"),
            ("stores water stem", "cactus.txt"), ("竹子", "熊猫.txt")]
    queries.write_text("".join(json.dumps({"query": q, "relevant": r}, ensure_ascii=False) + "\n" for q, r in rows),
                       encoding="utf-8")
    return root, index, queries


def test_perfect_retrieval_scores_one_and_the_report_is_written(animals):
    root, index, queries = animals
    out = root / "report"
    code, stdout, stderr = run_cli("eval", "retrieval", "--index", str(index), "--queries", str(queries),
                                   "--out", str(out), "--k", "1", "--k", "3")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["kind"] == "eval-retrieval" and report["n"] == 5 and report["sources"] == 5
    systems = {s["name"]: s for s in report["systems"]}
    assert set(systems) == {"hybrid", "dense", "keyword", "bm25"}
    for name in ("hybrid", "keyword", "bm25"):  # every query shares rare words with its one document
        assert systems[name]["recall@1"] == 1.0 and systems[name]["mrr@3"] == 1.0, name
    assert (out / "manifest.json").is_file() and "| hybrid (RRF) | 1.000 |" in (out / "report.md").read_text()
    assert report["hybrid_vs_best_single"] == {"metric": "recall@1", "hybrid": 1.0, "max_bm25_dense": 1.0}


def test_relevant_sources_missing_from_the_index_are_named(animals, tmp_path):
    _, index, _ = animals
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"query": "x", "relevant": ["nope.txt"]}) + "\n", encoding="utf-8")
    code, _, stderr = run_cli("eval", "retrieval", "--index", str(index), "--queries", str(q), "--out", str(tmp_path / "o"))
    assert code == 2 and "'nope.txt'" in stderr and stderr.count("\n") == 1


def test_eval_needs_a_set_or_an_index(tmp_path):
    code, _, stderr = run_cli("eval", "retrieval", "--out", str(tmp_path / "o"))
    assert code == 2 and "either --set" in stderr
    code, _, stderr = run_cli("eval", "retrieval", "--set", "klingon", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown retrieval set 'klingon'" in stderr


def test_builtin_sets_pair_each_query_with_its_own_document(shared_data, tmp_path):
    pairs = builtin_set("csl", shared_data, tmp_path / "csl")
    docs = (tmp_path / "csl" / "docs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(pairs) == 1000 and len(docs) == 2000
    assert pairs[0].relevant == {"docs.jsonl:1"} and "活性艳蓝" in json.loads(docs[0])["text"]
    pairs = builtin_set("self-instruct", shared_data, tmp_path / "si", limit=10)
    docs = (tmp_path / "si" / "docs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(pairs) == 10 and len(docs) == 427 and pairs[3].relevant == {"docs.jsonl:4"}
