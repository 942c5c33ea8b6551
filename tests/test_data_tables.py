"""The one table reader (data/tables.py): messy real-world files read the same way for training and eval."""

from __future__ import annotations

import pytest

from conftest import run_cli
from llmchain.data.tables import label_str, read_labelled, read_records, read_texts, sniff_header
from llmchain.errors import DataError, UserError


@pytest.mark.parametrize("raw, want", [(1, "1"), ("1", "1"), (1.0, "1"), ("1.0", "1"), (" 1.00 ", "1"),
                                       (True, "true"), ("TRUE", "true"), ("True", "true"), ("pos", "pos"),
                                       ("-1.0", "-1"), (0.5, "0.5"), ("Positive", "Positive")])
def test_labels_read_one_way(raw, want):
    assert label_str(raw) == want


def test_training_and_eval_read_mixed_label_spellings_alike(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "1.0"}\n{"text": "c", "label": true}\n'
                 '{"text": "d", "label": "true"}\n{"text": "e", "label": 0.0}\n', encoding="utf-8")
    d = read_labelled(p)
    assert d.labels == ["1", "1", "true", "true", "0"]
    q = tmp_path / "mixed.csv"
    q.write_text("text,label\na,1\nb,1.0\nc,TRUE\nd,true\ne,0\n", encoding="utf-8")
    assert read_labelled(q).labels == d.labels


def test_headerless_tsv_is_sniffed_and_columns_go_by_index(tmp_path):
    p = tmp_path / "chnsenti.tsv"
    p.write_text("1\t这家店的外卖很好吃，下次还来\n0\t送餐太慢了，菜都凉了\n", encoding="utf-8")
    d = read_labelled(p, text_column=1, label_column=0)
    assert d.texts == ["这家店的外卖很好吃，下次还来", "送餐太慢了，菜都凉了"] and d.labels == ["1", "0"]
    q = tmp_path / "agnews.csv"  # AG News: headerless, quoted, label first
    q.write_text('"3","Wall St. Bears Claw Back","Reuters - Short-sellers, Wall Street\'s dwindling band"\n'
                 '"4","New Chip","A faster chip, made smaller"\n', encoding="utf-8")
    d = read_labelled(q, text_column=2, label_column="0")
    assert d.labels == ["3", "4"] and d.texts[1] == "A faster chip, made smaller"


def test_header_sniffing_and_bom(tmp_path):
    assert sniff_header(["sentence", "label"]) and not sniff_header(["a fine movie , really", "1"])
    assert not sniff_header(["hello", "0"])
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefftext,label\n\"quoted, with comma\",pos\nplain,neg\n".encode())
    d = read_labelled(p)
    assert d.text_column == "text" and d.texts == ["quoted, with comma", "plain"]


def test_forced_header_flag_wins_over_sniffing(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("2019\tyear\nhello there\tx\n", encoding="utf-8")
    assert read_labelled(p, text_column=0, label_column=1, header=False).texts == ["2019", "hello there"]
    assert read_labelled(p, text_column="2019", label_column="year", header=True).texts == ["hello there"]


def test_huge_line_is_read(tmp_path):
    p = tmp_path / "big.tsv"
    long_text = "word " * 400_000  # 2 MB in one cell: beyond csv's default field limit
    p.write_text(f"text\tlabel\n{long_text}\t1\nshort\t0\n", encoding="utf-8")
    assert len(read_labelled(p).texts[0]) == len(long_text)


def test_bad_rows_are_rejected_with_line_or_fail_under_strict(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("text\tlabel\ngood\t1\n\t0\nonly-one-field\nfine\t0\n", encoding="utf-8")
    d = read_labelled(p)
    assert d.texts == ["good", "fine"] and [r["line"] for r in d.rejected] == [3, 4]
    with pytest.raises(DataError, match=r"bad.tsv:3: empty or missing text"):
        read_labelled(p, strict=True)
    with pytest.raises(DataError, match=r"bad.tsv:4: 1 fields"):
        read_records(p)


@pytest.mark.parametrize("content, kw, message", [
    (b"", {}, "is empty"),
    (b"text,label\na,1\n", {"text_column": 5}, "column index 5 is out of range"),
    (b"text,label\na,1\n", {"label_column": "stars"}, "no label column 'stars'"),
    (b"\xff\xfe\x00bad", {}, "not UTF-8"),
])
def test_bad_files_name_the_file_and_problem(tmp_path, content, kw, message):
    p = tmp_path / "x.csv"
    p.write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        read_labelled(p, **kw)
    assert str(p) in str(e.value)


def test_read_texts_keeps_alignment(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("\ufefffirst\n\nthird\n", encoding="utf-8")
    assert read_texts(p)[0] == ["first", "", "third"]


def test_eval_classify_cli_reports_a_bad_column_in_one_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\na good one,1\na bad one,0\n", encoding="utf-8")
    code, _, err = run_cli("eval", "classify", "--train", str(p), "--test", str(p), "--label-column", "7")
    assert code == 2 and "column index 7 is out of range" in err and err.count("\n") == 1


def test_real_headered_files_still_find_their_columns(shared_data):
    sst = read_labelled(shared_data / "sst2" / "dev.tsv")
    assert sst.text_column == "sentence" and set(sst.labels) == {"0", "1"} and not sst.rejected
