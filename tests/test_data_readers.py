"""Readers: every input format on real files from ../shared/data, sharding, discovery, iter_documents."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest

from llmchain.data.readers import ReaderOptions, Rejection, iter_documents, read_shard
from llmchain.data.sources import discover, plan_shards
from llmchain.errors import UserError


def read_all(paths, opts=None, shard_bytes=1 << 30):
    files, unknown = discover([str(p) for p in paths])
    opts = opts or ReaderOptions()
    items = [it for s in plan_shards(files, shard_bytes, opts.text_unit) for it in read_shard(s, opts)]
    docs = [d for d in items if not isinstance(d, Rejection)]
    bad = [d for d in items if isinstance(d, Rejection)]
    return docs, bad, unknown


def test_text_file_paragraph_and_line_units(shared_data):
    path = shared_data / "tinyshakespeare" / "input.txt"
    whole, _, _ = read_all([path])
    assert len(whole) == 1 and whole[0].text.startswith("First Citizen:")
    paras, bad, _ = read_all([path], ReaderOptions(text_unit="paragraph"))
    lines, _, _ = read_all([path], ReaderOptions(text_unit="line"))
    assert not bad
    raw = path.read_text(encoding="utf-8")
    assert len(paras) == len([p for p in raw.split("\n\n") if p.strip()])
    assert len(lines) == len([x for x in raw.splitlines() if x.strip()])
    assert paras[1].meta["line"] == 4 and paras[1].id.endswith(":4")  # "All:" starts on line 4
    assert raw.splitlines()[3] == paras[1].text.splitlines()[0] == "All:"
    md, bad, _ = read_all([shared_data / "alpaca_1k" / "SOURCE.md"])
    assert not bad and len(md) == 1 and md[0].text.startswith("#")


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_byte_range_shards_read_exactly_the_same_records(shared_data, unit):
    path = shared_data / "tinyshakespeare" / "input.txt"
    one, _, _ = read_all([path], ReaderOptions(text_unit=unit))
    files, _ = discover([str(path)])
    shards = plan_shards(files, 50_000, unit)
    assert len(shards) > 15  # one big file keeps many workers busy
    many = [d for s in shards for d in read_shard(s, ReaderOptions(text_unit=unit))]
    assert [(d.id, d.text) for d in many] == [(d.id, d.text) for d in one]


def test_jsonl_plain_gzip_and_zstd(tmp_path, shared_data):
    src = shared_data / "self_instruct_human" / "seed_tasks_train.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    import zstandard

    data = src.read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    shutil.copy(src, tmp_path / "c.jsonl")
    opts = ReaderOptions(text_field="instruction", id_field="id")
    for name in ("a.jsonl.gz", "b.jsonl.zst", "c.jsonl"):
        docs, bad, _ = read_all([tmp_path / name], opts)
        assert not bad
        assert [d.text for d in docs] == [r["instruction"] for r in rows]
        assert docs[0].id == rows[0]["id"]


def test_jsonl_bad_lines_are_rejected_with_line_numbers(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(
        b'{"text": "fine one"}\n'
        b'{"text": "broken\n'
        b'{"other": "no text field"}\n'
        b'{"text": "bad \xff\xfe utf8"}\n'
        b"\n"
        b'{"text": 42}\n'
        b'{"text": "fine two"}\n'
    )
    docs, bad, _ = read_all([f])
    assert [d.text for d in docs] == ["fine one", "fine two"]
    assert [(b.line, b.reason.split(":")[0].split(" ")[0]) for b in bad] == [
        (2, "invalid_json"), (3, "missing_field"), (4, "invalid_utf8"), (6, "field"),
    ]


def test_csv_and_tsv_columns(shared_data):
    docs, bad, _ = read_all([shared_data / "waimai_10k_zh" / "waimai_10k.csv"], ReaderOptions(columns=["review"]))
    assert not bad and len(docs) == 11987
    assert docs[0].text == "很快，好吃，味道足，量大" and docs[0].meta["label"] == "1"
    # AG News has no header: title and description (columns 1, 2) joined
    ag, bad, _ = read_all([shared_data / "ag_news" / "test.csv"], ReaderOptions(columns=["1", "2"], csv_header=False))
    assert not bad and len(ag) == 7600
    first = next(csv.reader(open(shared_data / "ag_news" / "test.csv", encoding="utf-8")))
    assert ag[0].text == first[1] + "\n" + first[2]
    tsv, bad, _ = read_all([shared_data / "sst2" / "dev.tsv"], ReaderOptions(columns=["sentence"]))
    assert not bad and len(tsv) == 872


def test_csv_missing_column_is_one_rejection(shared_data):
    docs, bad, _ = read_all([shared_data / "sst2" / "dev.tsv"], ReaderOptions(columns=["review"]))
    assert docs == [] and len(bad) == 1 and bad[0].reason.startswith("missing_column: 'review'")


def test_parquet(tmp_path, shared_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(csv.DictReader(open(shared_data / "trec" / "test.tsv", encoding="utf-8"), delimiter="\t"))
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["coarse_label"] for r in rows]}),
                   tmp_path / "trec.parquet", row_group_size=128)
    docs, bad, _ = read_all([tmp_path / "trec.parquet"])
    assert not bad and [d.text for d in docs] == [r["text"] for r in rows]
    assert docs[3].meta["label"] == rows[3]["coarse_label"]


def test_html_main_text_matches_ground_truth(shared_data):
    folder = shared_data / "web_html_articles"
    gold = json.loads((folder / "ground-truth.json").read_text(encoding="utf-8"))
    pages = sorted((folder / "html").glob("*.html.gz"))[:10]
    docs, bad, _ = read_all(pages)
    assert len(docs) == len(pages) and not bad
    recall = precision = 0.0
    for d in docs:
        gold_words = set(gold[Path(d.source).name.split(".")[0]]["articleBody"].split())
        got = set(d.text.split())
        recall += len(gold_words & got) / len(gold_words) / len(docs)
        precision += len(gold_words & got) / len(got) / len(docs)
    # the article is found (recall), and boilerplate (menus, footers) is mostly left out (precision)
    assert recall > 0.9 and precision > 0.85, (recall, precision)


def test_warc_html_responses(shared_data):
    docs, bad, _ = read_all([shared_data / "web_warc_iana" / "iana.warc.gz"])
    assert len(docs) == 16  # the 16 text/html pages with status 200
    assert {b.reason for b in bad} == {"http_status_302"} and len(bad) == 4
    urls = {d.meta["url"] for d in docs}
    assert "http://www.iana.org/domains/root/db" in urls
    about = next(d for d in docs if d.meta["url"] == "http://www.iana.org/about")
    assert "Internet Assigned Numbers Authority" in about.text and "<div" not in about.text


def test_folders_globs_unknown_types_and_missing_paths(tmp_path, shared_data):
    files, unknown = discover([str(shared_data / "alpaca_1k")])
    assert [f.name for f in files] == ["SOURCE.md"]
    assert [f.name for f in unknown] == ["alpaca_data_1k.json"]  # reported, not guessed
    files, _ = discover([str(shared_data / "sst*" / "*.tsv")])
    assert len(files) == 6
    with pytest.raises(UserError, match="no such file"):
        discover([str(tmp_path / "nope.txt")])


def test_empty_and_unreadable_files_are_rejected(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b this is not gzip")
    docs, bad, _ = read_all([tmp_path])
    assert docs == []
    assert sorted((Path(b.source).name, b.reason.split(":")[0]) for b in bad) == [
        ("broken.jsonl.gz", "unreadable_file"), ("empty.jsonl", "empty_file"),
    ]


def test_iter_documents_dir_jsonl_and_txt(tmp_path):
    from llmchain.data.pipeline import Pipeline

    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": f"doc number {i}"}) for i in range(5)) + "\n")
    Pipeline([]).run([tmp_path / "in.jsonl"], tmp_path / "out")
    docs = list(iter_documents(tmp_path / "out"))
    assert [d["text"] for d in docs] == [f"doc number {i}" for i in range(5)]
    assert set(docs[0]) == {"id", "text", "source", "meta"}
    assert [d["text"] for d in iter_documents(tmp_path / "in.jsonl")] == [d["text"] for d in docs]
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    assert [d["text"] for d in iter_documents(tmp_path / "a.txt")] == ["hello\nworld\n"]


def test_jsonl_id_field_is_the_document_id_by_default(tmp_path):
    f = tmp_path / "ids.jsonl"
    rows = [{"id": "doc-a", "text": "alpha", "lang": "en"}, {"id": 7, "text": "seven"}, {"text": "no id"},
            {"id": None, "text": "null id"}, {"id": 1.5, "text": "float"}, {"id": True, "text": "bool"},
            {"id": "", "text": "empty"}, {"id": ["x"], "text": "list"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    docs, bad, _ = read_all([f])  # default ReaderOptions: id_field "id"
    assert [d.id for d in docs] == ["doc-a", "7", f"{f}:3", f"{f}:4"]
    assert docs[0].meta == {"lang": "en", "line": 1} and "id" not in docs[1].meta
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [(n, "id_field") for n in (5, 6, 7, 8)]
    assert "not a string or integer id" in bad[0].reason and "id_field: null" in bad[0].reason
    # id_field null: the old behaviour, FILE:LINE ids and the field kept in meta
    old, bad, _ = read_all([f], ReaderOptions(id_field=None))
    assert not bad and [d.id for d in old] == [f"{f}:{n}" for n in range(1, 9)]
    assert old[0].meta["id"] == "doc-a" and old[1].meta["id"] == 7


def test_duplicate_ids_stop_data_prepare_naming_both_records(tmp_path):
    from llmchain.data.pipeline import Pipeline
    from llmchain.errors import DataError

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": "x1", "text": "one"}\n{"id": "x2", "text": "two"}\n')
    (tmp_path / "in" / "b.jsonl").write_text('{"id": "x3", "text": "three"}\n{"id": "x2", "text": "again"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: document id 'x2' is also the id of .*a\.jsonl:2"):
        Pipeline([]).run([tmp_path / "in"], tmp_path / "out")
    # the same files, numbered by FILE:LINE, go through (the reader options are part of the work-dir key)
    from llmchain.data.readers import ReaderOptions

    Pipeline([], reader=ReaderOptions(id_field=None)).run([tmp_path / "in"], tmp_path / "out")
    ids = [d["id"] for d in iter_documents(tmp_path / "out")]
    assert len(ids) == 4 == len(set(ids)) and ids[0].endswith("a.jsonl:1")
