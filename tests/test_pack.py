"""Token shards decode back to exactly the documents; counts, split and file layout are exact and deterministic."""

import json

import numpy as np
import pytest

import llmchain.data.pack as pack
from conftest import run_cli
from llmchain.data.pack import open_split, pack_documents, read_shards
from llmchain.errors import UserError
from llmchain.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """~600 real documents (Shakespeare speeches, Chinese poems) + edge cases, as .jsonl, and a tokenizer."""
    root = tmp_path_factory.mktemp("pack")
    speeches = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")[:500]
    poems = sorted((shared_data / "zh_classical" / "poems_and_songs").rglob("*.txt"))
    zh = [p.read_text(encoding="utf-8")[:3000] for p in poems][:100]
    texts = speeches + zh + ["a literal <|endoftext|> inside text", "emoji 🎉 \x00 ctrl", " "]
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    train_tokenizer(docs, 600, root / "tok")
    return docs, root / "tok", texts


def _decode_split(tok_dir, shards_dir, split):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = (
        np.concatenate(open_split(shards_dir, split))
        if read_shards(shards_dir)["splits"][split]["files"]
        else []
    )
    docs, cur = [], None
    for t in list(map(int, ids)):
        if t == 0:  # every document starts with <|endoftext|>
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur is not None:
        docs.append(cur)
    return [tok.decode(d, skip_special_tokens=False) for d in docs]


def test_shards_decode_back_to_the_documents_with_exact_counts(corpus, tmp_path):
    docs, tok_dir, texts = corpus
    meta = pack_documents(docs, tok_dir, tmp_path / "s", val_fraction=0.1, workers=1)
    assert meta == read_shards(tmp_path / "s") and meta["dtype"] == "uint16" and meta["eos_token_id"] == 0
    val_idx = [i for i in range(len(texts)) if (i + 1) % 10 == 0]  # every 10th document
    expected = {
        "train": [t for i, t in enumerate(texts) if i not in val_idx],
        "val": [texts[i] for i in val_idx],
    }
    assert len(expected["val"]) == len(texts) // 10
    for split, want in expected.items():
        got = _decode_split(tok_dir, tmp_path / "s", split)
        assert got == want
        s = meta["splits"][split]
        assert s["documents"] == len(want)
        assert s["bytes"] == sum(len(t.encode("utf-8")) for t in want)
        assert s["tokens"] == sum(len(m) for m in open_split(tmp_path / "s", split))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["kind"] == "token-shards" and manifest["inputs"]["tokenizer"]["sha256"]


def test_output_is_the_same_with_many_workers_and_small_files(corpus, tmp_path, monkeypatch):
    docs, tok_dir, texts = corpus
    one = pack_documents(docs, tok_dir, tmp_path / "one", workers=1)
    monkeypatch.setattr(pack, "BATCH_CHARS", 5000)  # many batches → the process pool is used
    many = pack_documents(docs, tok_dir, tmp_path / "many", workers=2, shard_tokens=4096)
    assert len(many["splits"]["train"]["files"]) > 3
    for split in ("train", "val"):
        a = np.concatenate(open_split(tmp_path / "one", split))
        b = np.concatenate(open_split(tmp_path / "many", split))
        assert np.array_equal(a, b)
        assert all(len(m) == 4096 for m in open_split(tmp_path / "many", split)[:-1])
        assert {k: v for k, v in one["splits"][split].items() if k != "files"} == {
            k: v for k, v in many["splits"][split].items() if k != "files"
        }


def test_split_by_chars_is_the_standard_90_10_shakespeare_split(shared_data, tmp_path):
    src = shared_data / "tinyshakespeare" / "input.txt"
    text = src.read_text(encoding="utf-8")
    train_tokenizer(src, 300, tmp_path / "tok")
    code, out, err = run_cli("data", "pack", str(src), "--tokenizer", str(tmp_path / "tok"), "--out",
                             str(tmp_path / "s"), "--split-by", "chars", "--val-fraction", "0.1")  # fmt: skip
    assert code == 0, err
    assert "val tokens" in out
    meta = read_shards(tmp_path / "s")
    cut = int(len(text) * 0.9)  # nanoGPT's shakespeare split: first 90 % of characters train, rest val
    assert meta["splits"]["train"]["bytes"] == cut == 1_003_854
    assert meta["splits"]["val"]["bytes"] == len(text) - cut == 111_540
    assert _decode_split(tmp_path / "tok", tmp_path / "s", "val") == [text[cut:]]


def test_one_document_split_by_documents_is_a_clear_error(shared_data, corpus, tmp_path):
    _, tok_dir, _ = corpus
    src = shared_data / "tinyshakespeare" / "input.txt"
    with pytest.raises(UserError, match="--split-by chars"):
        pack_documents(src, tok_dir, tmp_path / "s", val_fraction=0.1)
    assert not (tmp_path / "s").exists()  # nothing half-written
    meta = pack_documents(src, tok_dir, tmp_path / "s", val_fraction=0.0)
    assert meta["splits"]["val"] == {"tokens": 0, "documents": 0, "bytes": 0, "files": []}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokenizer", "{tmp}/missing"], "not a tokenizer directory"),
        (["--tokenizer", "{tok}", "--val-fraction", "1.5"], "val_fraction"),
        (["--tokenizer", "{tok}", "--split-by", "lines"], "split_by"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(corpus, tmp_path, args, message):
    docs, tok_dir, _ = corpus
    args = [a.format(tmp=tmp_path, tok=tok_dir) for a in args]
    code, _, err = run_cli("data", "pack", str(docs), "--out", str(tmp_path / "s"), *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_prepared_documents_dir_is_read_in_part_order(corpus, tmp_path):
    import gzip

    _, tok_dir, texts = corpus
    parts = tmp_path / "prepared" / "documents"
    parts.mkdir(parents=True)
    for n, chunk in enumerate([texts[:300], texts[300:]]):  # what `llmchain data prepare` writes
        with gzip.open(parts / f"part-{n:05d}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": f"{n}-{i}", "text": t, "source": "x", "meta": {}}) + "\n"
                         for i, t in enumerate(chunk))  # fmt: skip
    meta = pack_documents(tmp_path / "prepared", tok_dir, tmp_path / "s", val_fraction=0.5, workers=1)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(texts)
    assert _decode_split(tok_dir, tmp_path / "s", "val") == texts[1::2]
