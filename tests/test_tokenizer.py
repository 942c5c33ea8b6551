"""Byte-level BPE: exact round trip on any text, HF-loadable dir with special tokens and a chat template."""

import gzip
import json
import random

import pytest

from conftest import run_cli
from llmchain.errors import UserError
from llmchain.tokenizer import CHAT_TEMPLATE, MIN_VOCAB, SPECIAL_TOKENS, load_tokenizer, train_tokenizer

SAMPLES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  Indented   spaces\ttab",
    "满纸荒唐言，一把辛酸泪！都云作者痴，谁解其中味？",
    "emoji 🎉👩‍👩‍👧🇺🇳 and accents: naïve café Ångström",
    "control \x00\x01\x07\x1b[31mred\x1b[0m\r\n\x7f\u200b\ufeff end",
    "specials in text: <|endoftext|> <|im_start|>user\nhi<|im_end|> <|pad|>",
    "",
    " ",
    "   leading and trailing   ",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, shared_data):
    # Shakespeare + classical Chinese in one .jsonl.gz: two scripts, two documents.
    src = tmp_path_factory.mktemp("docs") / "docs.jsonl.gz"
    en = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    zh = (shared_data / "zh_classical" / "hongloumeng_ch01-20.txt").read_text(encoding="utf-8")[:50_000]
    with gzip.open(src, "wt", encoding="utf-8") as f:
        for i, text in enumerate([en, zh]):
            f.write(json.dumps({"id": str(i), "text": text}, ensure_ascii=False) + "\n")
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    summary = train_tokenizer(src, 1024, out)
    assert summary["documents"] == 2 and summary["vocab_size"] == 1024
    return out


def test_round_trip_is_exact_for_any_text(tok_dir):
    tok = load_tokenizer(tok_dir)
    rng = random.Random(0)
    random_texts = [
        bytes(rng.randrange(256) for _ in range(200)).decode("utf-8", errors="replace") for _ in range(20)
    ]
    random_texts += ["".join(chr(rng.randrange(0x20000)) for _ in range(100)).encode("utf-8", "replace").decode()
                     for _ in range(20)]  # fmt: skip
    for text in SAMPLES + random_texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert all(0 <= i < len(tok) for i in ids)


def test_trained_vocab_compresses_both_scripts(tok_dir):
    tok = load_tokenizer(tok_dir)
    en, zh = SAMPLES[0], SAMPLES[1]
    assert len(tok.encode(en)) < 0.5 * len(en.encode("utf-8"))  # merges learnt from Shakespeare
    assert len(tok.encode(zh)) < 0.7 * len(zh.encode("utf-8"))  # and from 红楼梦


def test_special_tokens_and_config_files(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 1
    # A special token's text is one id, and encode() adds nothing on its own.
    assert tok.encode("<|im_start|>", add_special_tokens=True) == [2]
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["eos_token"] == "<|endoftext|>"
    manifest = json.loads((tok_dir / "manifest.json").read_text())
    assert manifest["kind"] == "tokenizer" and manifest["counts"]["vocab_size"] == 1024
    assert "sha256" in manifest["inputs"]["documents"]


def test_auto_tokenizer_and_chat_template(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho art thou?<|im_end|>\n"
                    "<|im_start|>assistant\n")  # fmt: skip
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(2) == 3 and ids.count(3) == 2 and tok.decode(ids) == text


def test_training_is_deterministic(tmp_path, shared_data):
    src = shared_data / "tinyshakespeare" / "input.txt"
    a, b = tmp_path / "a", tmp_path / "b"
    train_tokenizer(src, MIN_VOCAB + 50, a)
    train_tokenizer(src, MIN_VOCAB + 50, b)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_cli_trains_a_loadable_tokenizer(tmp_path, shared_data):
    out = tmp_path / "tok"
    code, stdout, err = run_cli("tokenizer", "train", str(shared_data / "zh_classical" / "hongloumeng_ch01-20.txt"),
                                "--vocab-size", "400", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "vocab size" in stdout
    assert len(load_tokenizer(out)) == 400


def test_val_fraction_leaves_the_val_split_out(tmp_path, shared_data):
    """--val-fraction/--split-by as in `data pack`: no merge may come from text that pack puts in val."""
    from llmchain.data.pack import pack_documents

    train_text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:44_100]
    src = tmp_path / "doc.txt"  # the last 10 % of the characters (pack's val part) is a word seen nowhere else
    src.write_text(train_text + " Zyxwvq" * 700, encoding="utf-8")
    plain, held = tmp_path / "plain", tmp_path / "held"
    train_tokenizer(src, MIN_VOCAB + 300, plain)
    code, _, err = run_cli("tokenizer", "train", str(src), "--vocab-size", str(MIN_VOCAB + 300), "--out", str(held),
                           "--val-fraction", "0.1", "--split-by", "chars")  # fmt: skip
    assert code == 0, err
    assert "ĠZyxwvq" in json.loads((plain / "tokenizer.json").read_text())["model"]["vocab"]
    vocab = json.loads((held / "tokenizer.json").read_text())["model"]["vocab"]
    assert not any("Zy" in t or "xw" in t or "vq" in t for t in vocab)
    manifest = json.loads((held / "manifest.json").read_text())
    assert manifest["config"]["val_fraction"] == 0.1 and manifest["config"]["split_by"] == "chars"
    # the part left out is exactly what pack sends to val
    meta = pack_documents(src, held, tmp_path / "shards", val_fraction=0.1, split_by="chars")
    assert manifest["counts"]["characters"] == meta["splits"]["train"]["bytes"] == int(len(src.read_text()) * 0.9)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocab-size", "100"], "at least 260"),
        (["--vocab-size", "1000", "--min-frequency", "0"], "min_frequency"),
        (["--vocab-size", "1000", "--val-fraction", "1.5"], "val_fraction"),
        (["--vocab-size", "1000", "--split-by", "lines"], "split_by"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, shared_data, args, message):
    src = shared_data / "tinyshakespeare" / "input.txt"
    code, stdout, err = run_cli("tokenizer", "train", str(src), "--out", str(tmp_path / "t"), *args)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_missing_inputs_are_user_errors(tmp_path):
    code, _, err = run_cli("tokenizer", "train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t"))
    assert code == 2 and "no such file" in err and err.count("\n") == 1
    with pytest.raises(UserError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        train_tokenizer(tmp_path / "empty.txt", 300, tmp_path / "t")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl"):
        train_tokenizer(tmp_path / "bad.jsonl", 300, tmp_path / "t")


def test_non_utf8_text_file_is_a_user_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1") * 100)
    code, _, err = run_cli("tokenizer", "train", str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "t"))
    assert code == 2 and "UTF-8" in err and err.count("\n") == 1
