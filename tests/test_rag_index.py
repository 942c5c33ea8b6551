"""llmchain index / search: documents are found, offsets are exact, rebuilds are incremental and safe,
bad files and bad input are reported. Small corpora (tens of passages): MiniLM on CPU is slow-ish."""

from __future__ import annotations

import builtins
import csv
import json
import os
import sqlite3
from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmchain.config import DataReaderConfig, IndexConfig
from llmchain.errors import UserError
from llmchain.rag.build import build_index
from llmchain.rag.index import DENSE_WEIGHT, Index, fuse, rrf

ENGLISH = {
    "eiffel.md": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
                 "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.",
    "sourdough.txt": "To bake sourdough bread, feed the starter the night before. Mix flour, water and salt, "
                     "let the dough rise slowly, shape it, and bake it in a very hot covered pot.",
    "python.md": "Python lists are ordered, mutable sequences. Use append to add an element to the end "
                 "and sort to order the elements in place.",
}


def _csl_rows(shared_data: Path, n: int) -> list[dict[str, str]]:
    with open(shared_data / "csl_zh_title_summarization" / "test.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """20 CSL abstracts (one JSONL file, a source per line), 3 English files and 6 Self-Instruct tasks."""
    root = tmp_path_factory.mktemp("rag-corpus")
    docs = root / "docs"
    docs.mkdir()
    rows = _csl_rows(shared_data, 20)
    (docs / "csl.jsonl").write_text(
        "".join(json.dumps({"text": r["abstract"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for name, text in ENGLISH.items():
        (docs / name).write_text(text, encoding="utf-8")
    tasks = (shared_data / "self_instruct_human" / "seed_tasks_train.jsonl").read_text(encoding="utf-8").splitlines()
    (docs / "tasks").mkdir()
    for i, line in enumerate(tasks[:6]):
        t = json.loads(line)
        (docs / "tasks" / f"task{i}.md").write_text(f"{t['instruction']}\n\n{t['output']}", encoding="utf-8")
    out = root / "index.sqlite"
    summary = build_index([str(docs)], out, IndexConfig(), progress=False)
    return {"docs": docs, "index": out, "summary": summary, "rows": rows}


def test_build_counts_every_file_and_source(corpus):
    s = corpus["summary"]
    assert (s.added, s.changed, s.removed, s.unchanged, s.skipped) == (1 + 3 + 6, 0, 0, 0, [])
    assert s.sources == 20 + 3 + 6
    assert s.embedded == s.passages >= s.sources


def test_chinese_titles_find_their_abstracts(corpus):
    with Index.open(corpus["index"]) as idx:
        for i in (0, 4, 9, 15):
            title = corpus["rows"][i]["title"]
            for mode in ("hybrid", "keyword"):
                res = idx.search(title, k=5, mode=mode)
                assert f"csl.jsonl:{i + 1}" in [h.source for h in res.hits], (mode, title)


def test_chinese_two_character_word_is_a_keyword(corpus):
    # 血压 occurs only inside 抗高血压药: a trigram or per-run unicode61 index would not match it
    with Index.open(corpus["index"]) as idx:
        res = idx.search("血压", k=3, mode="keyword")
    assert res.hits and "血压" in res.hits[0].text
    assert res.hits[0].source == "csl.jsonl:2"


def test_english_queries_find_their_documents(corpus):
    with Index.open(corpus["index"]) as idx:
        # no shared words with the passage: only the dense half can find it
        dense = idx.search("famous iron landmark in the French capital", k=3, mode="dense")
        assert dense.hits[0].source == "eiffel.md"
        hybrid = idx.search("how do I make bread with a starter", k=3)
        assert hybrid.hits[0].source == "sourdough.txt" and hybrid.mode == "hybrid"
        keyword = idx.search("appending elements to lists", k=3, mode="keyword")  # porter: appending → append
        assert keyword.hits[0].source == "python.md"


def test_offsets_slice_the_source_exactly(corpus):
    with Index.open(corpus["index"]) as idx:
        rows = idx.conn.execute('SELECT s.name, s.text, p.start, p."end", p.text FROM passages p '
                                "JOIN sources s ON s.id = p.source_id").fetchall()
        assert len(rows) == corpus["summary"].passages
        for name, text, start, end, passage in rows:
            assert text[start:end] == passage and passage.strip() == passage and passage, name
        for q in ("染料的固色率", "Gustave Eiffel"):
            for h in idx.search(q, k=5).hits:
                assert idx.source_text(h.source)[h.start:h.end] == h.text


def test_passage_by_id_is_the_hit_search_returns_and_none_when_absent(corpus):
    with Index.open(corpus["index"]) as idx:
        hit = idx.search("Gustave Eiffel", k=1).hits[0]
        got = idx.passage(hit.passage_id)
        assert (got.passage_id, got.source, got.start, got.end, got.text) == (
            hit.passage_id, hit.source, hit.start, hit.end, hit.text)
        assert idx.source_text(got.source)[got.start : got.end] == got.text and got.score == 0.0
        assert idx.passage(10**9) is None and idx.passage(-1) is None


def test_rrf_fuses_ranks_not_scores():
    fused = rrf([[(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 40.0), (1, 10.0)]], k=3)
    assert [pid for pid, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_fusion_puts_a_document_only_the_strong_half_found_on_top():
    # keyword finds 7 far ahead of the rest; dense (weak here: flat cosines) never saw it
    dense = [(1, 0.31), (2, 0.30), (3, 0.29), (4, 0.28)]
    keyword = [(7, 25.0), (2, 4.0), (8, 3.0)]
    assert rrf([dense, keyword], k=3)[0][0] == 2  # rank fusion lets the weak half's votes decide
    fused = fuse(dense, keyword, 3, dense_weight=DENSE_WEIGHT * 0.05)  # a Chinese query under MiniLM
    assert [pid for pid, _ in fused] == [7, 2, 1]  # 8 (BM25 min of the candidates) scales to 0
    assert fused[0][1] == pytest.approx(1 - DENSE_WEIGHT * 0.05)
    # and the other way round: a fully covered query, dense strong, keyword found only weak matches
    fused = fuse([(5, 0.8), (6, 0.2)], [(6, 1.1), (9, 1.0)], 3, dense_weight=DENSE_WEIGHT)
    assert fused[0][0] == 5 and [pid for pid, _ in fused] == [5, 6, 9]


def test_fusion_edge_cases():
    assert fuse([], [], 5, 0.6) == []
    assert [p for p, _ in fuse([(1, 0.5), (2, 0.1)], [], 5, 0.6)] == [1, 2]  # a query without words
    assert fuse([(1, 0.5)], [(1, 3.0)], 5, 0.6) == [(1, pytest.approx(1.0))]  # one candidate scales to 1
    assert fuse([(1, 0.9)], [(2, 5.0)], 5, 7.0)[0][0] == 1  # weights clamp to [0, 1]


def test_encoder_coverage_tells_english_from_chinese_and_is_in_the_manifest(corpus):
    with Index.open(corpus["index"]) as idx:
        en, zh, empty = idx.encoder.coverage(["how do I make bread with a starter", "抗高血压药的应用", ""])
        assert en == 1.0 and zh < 0.2 and empty == 1.0
        # 20 Chinese abstracts beside 9 English files: partly covered
        assert 0.2 < idx.manifest["encoder"]["coverage"] < 0.9


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")


def test_reindex_embeds_only_the_edited_file_and_drops_the_deleted_one(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "i.sqlite"
    _write(docs, {"a.txt": "Apples are red fruit.", "b.txt": "Bananas are yellow.", "c.txt": "Cherries are small.",
                  "d.md": "Dates grow on palms."})
    first = build_index([str(docs)], out, IndexConfig(), progress=False)
    assert (first.added, first.embedded) == (4, 4)
    (docs / "a.txt").write_text("Apricots are orange fruit with a stone.", encoding="utf-8")
    (docs / "c.txt").unlink()
    code, stdout, stderr = run_cli("index", str(docs), "--out", str(out))
    assert code == 0, stderr
    with sqlite3.connect(out) as conn:
        manifest = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()[0])
    assert manifest["counts"] == {"files": 3, "sources": 3, "passages": 3}
    for label, value in (("files added", 0), ("files changed", 1), ("files removed", 1), ("files unchanged", 2),
                         ("passages embedded now", 1)):
        assert any(label in line and line.split("│")[-2].strip() == str(value) for line in stdout.splitlines()), label
    with Index.open(out) as idx:
        assert sorted(idx.sources()) == ["a.txt", "b.txt", "d.md"]
        assert "Apricots" in idx.search("apricots", k=1, mode="keyword").hits[0].text
        assert idx.search("cherries", k=3, mode="keyword").hits == []
    again = build_index([str(docs)], out, IndexConfig(), progress=False)
    assert (again.unchanged, again.embedded) == (3, 0)


def test_a_crash_mid_update_leaves_the_old_index(tmp_path, monkeypatch):
    docs, out = tmp_path / "docs", tmp_path / "i.sqlite"
    _write(docs, {"a.txt": "Alpha one.", "b.txt": "Beta two."})
    build_index([str(docs)], out, IndexConfig(), progress=False)
    (docs / "a.txt").write_text("Alpha changed.", encoding="utf-8")
    _write(docs, {"c.txt": "Gamma three."})

    def crash(text):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("llmchain.rag.build.keyword_terms", crash)
    with pytest.raises(RuntimeError):
        build_index([str(docs)], out, IndexConfig(), progress=False)
    with Index.open(out) as idx:  # the old index, whole
        assert sorted(idx.sources()) == ["a.txt", "b.txt"] and idx.source_text("a.txt") == "Alpha one."
    fresh = tmp_path / "new.sqlite"
    with pytest.raises(RuntimeError):
        build_index([str(docs)], fresh, IndexConfig(), progress=False)
    assert not fresh.exists() and not list(tmp_path.glob(".new.sqlite.tmp-*"))


def test_empty_binary_and_unreadable_files_are_reported_and_skipped(tmp_path, monkeypatch):
    docs, out = tmp_path / "docs", tmp_path / "i.sqlite"
    _write(docs, {"good.txt": "A readable file about owls.", "empty.txt": "", "secret.md": "hidden words"})
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary\xff\xfe" * 50)
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    secret = docs / "secret.md"
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads through chmod 000: make reading it fail as it would for a user
        real_open = builtins.open

        def guarded(file, *args, **kwargs):
            if Path(str(file)).resolve() == secret.resolve():
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded)
    try:
        code, stdout, stderr = run_cli("index", str(docs), "--out", str(out))
    finally:
        secret.chmod(0o644)
    assert code == 0, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 4, stderr
    reasons = {Path(ln.split(":")[0].removeprefix("skipped ")).name: ln for ln in lines}
    assert "empty" in reasons["empty.txt"] and "binary" in reasons["blob.txt"]
    assert "Permission denied" in reasons["secret.md"] and "unknown file type" in reasons["photo.png"]
    with Index.open(out) as idx:
        assert idx.sources() == ["good.txt"]


def test_a_too_long_query_is_truncated_and_says_so(corpus):
    long_query = " ".join(["sourdough bread starter dough flour"] * 80)  # ~400 words, > 256 tokens
    code, stdout, stderr = run_cli("search", str(corpus["index"]), long_query, "--json", "--k", "2")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["query_truncated"] is True and "longer than the encoder's 256 tokens" in stderr
    assert result["hits"][0]["source"] == "sourdough.txt"
    code, stdout, stderr = run_cli("search", str(corpus["index"]), "sourdough", "--json")
    assert json.loads(stdout)["query_truncated"] is False and stderr == ""


def test_search_prints_ranked_hits(corpus):
    code, stdout, _ = run_cli("search", str(corpus["index"]), "Eiffel tower engineer", "--k", "2")
    assert code == 0 and stdout.startswith("1. eiffel.md [0:")


@pytest.mark.parametrize("make, args, message", [
    (None, ["search", "{tmp}/missing.sqlite", "q"], "missing.sqlite: no such index file"),
    ("text", ["search", "{tmp}/notes.sqlite", "q"], "notes.sqlite: not an llmchain index"),
    (None, ["search", "{index}", "q", "--mode", "fuzzy"], "--mode 'fuzzy': use one of hybrid, dense, keyword"),
    (None, ["index", "{tmp}/nowhere", "--out", "{tmp}/x.sqlite"], "nowhere: no such file or directory"),
    ("text", ["index", "{docs}", "--out", "{tmp}/notes.sqlite"], "notes.sqlite: not an llmchain index"),
])
def test_bad_input_is_one_line_and_exit_2(corpus, tmp_path, make, args, message):
    if make == "text":
        (tmp_path / "notes.sqlite").write_text("just some notes", encoding="utf-8")
    fill = {"tmp": str(tmp_path), "index": str(corpus["index"]), "docs": str(corpus["docs"])}
    code, stdout, stderr = run_cli(*[a.format(**fill) for a in args])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert (tmp_path / "notes.sqlite").read_text(encoding="utf-8") == "just some notes" if make else True


def test_index_open_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope.sqlite: no such index file"):
        Index.open(tmp_path / "nope.sqlite")


def test_csv_columns_and_reader_settings_reach_the_index(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "t.tsv").write_text("title\tbody\nOwls\tOwls hunt at night.\nBees\tBees make honey.\n", encoding="utf-8")
    out = tmp_path / "i.sqlite"
    build_index([str(docs)], out, IndexConfig(reader=DataReaderConfig(columns=["body"])), progress=False)
    with Index.open(out) as idx:
        assert sorted(idx.sources()) == ["t.tsv:2", "t.tsv:3"]
        assert idx.source_text("t.tsv:3") == "Bees make honey."


def test_a_prepared_documents_dir_is_indexed_by_document_id(tmp_path):
    import gzip

    prepared = tmp_path / "prepared"
    (prepared / "documents").mkdir(parents=True)
    (prepared / "rejected").mkdir()
    (prepared / "rejected" / "part-00000.jsonl").write_text('{"text": "rejected junk"}\n', encoding="utf-8")
    docs = [{"id": "raw/a.txt", "text": "Otters hold hands while sleeping.", "source": "raw/a.txt", "meta": {}},
            {"id": "raw/b.jsonl:7", "text": "水獭睡觉时会手牵手。", "source": "raw/b.jsonl", "meta": {}}]
    with gzip.open(prepared / "documents" / "part-00000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    out = tmp_path / "i.sqlite"
    build_index([str(prepared)], out, IndexConfig(), progress=False)
    with Index.open(out) as idx:
        assert idx.sources() == ["raw/a.txt", "raw/b.jsonl:7"]
        assert idx.search("水獭", k=1, mode="keyword").hits[0].source == "raw/b.jsonl:7"


def test_changed_passage_settings_re_embed_everything(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "i.sqlite"
    _write(docs, {"a.txt": "One. Two. Three. Four.", "b.txt": "Five."})
    build_index([str(docs)], out, IndexConfig(), progress=False)
    notes: list[str] = []
    s = build_index([str(docs)], out, IndexConfig(passage_tokens=16), progress=False, log=notes.append)
    assert s.rebuilt and (s.added, s.embedded) == (2, 2) and "passage_tokens: 160 → 16" in notes[0]


def test_an_index_inside_the_folder_it_indexes_is_not_a_skipped_file(tmp_path):
    docs = tmp_path / "docs"
    _write(docs, {"a.txt": "Kiwis are flightless birds."})
    for _ in range(2):
        s = build_index([str(docs)], docs / "index.sqlite", IndexConfig(), progress=False)
        assert s.skipped == []
    assert s.unchanged == 1
