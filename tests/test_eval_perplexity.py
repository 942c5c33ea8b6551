"""`llmchain.eval.perplexity.evaluate_lm`: loss, perplexity and bits-per-byte on a text file or token shards.

A model whose logits are all equal predicts uniformly, so its loss is exactly ln(vocab) per token and
its bits-per-byte is tokens · log2(vocab) / bytes — an exact check of the accounting. A random model's
loss is checked against one forward pass over the whole text.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llmchain.errors import UserError
from llmchain.eval.perplexity import evaluate_lm, strided_windows, windows


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A BPE tokenizer and shards of 30k characters of tinyshakespeare, plus its val text as a file."""
    from llmchain.data.pack import pack_documents
    from llmchain.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("lm")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000]
    (root / "all.txt").write_text(text, encoding="utf-8")
    cut = int(len(text) * 0.9)
    (root / "val.txt").write_text(text[cut:], encoding="utf-8")
    train_tokenizer(root / "all.txt", 300, root / "tok")
    pack_documents(root / "all.txt", root / "tok", root / "shards", val_fraction=0.1, split_by="chars", workers=1)
    return {"tok": root / "tok", "shards": root / "shards", "val": root / "val.txt", "root": root}


def _model_dir(corpus, name: str, uniform: bool) -> Path:
    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama
    from llmchain.model.presets import preset_config
    from llmchain.tokenizer import load_tokenizer

    tok = load_tokenizer(corpus["tok"])
    torch.manual_seed(0)
    model = Llama(preset_config("nano", len(tok), max_position_embeddings=64, eos_token_id=tok.eos_token_id))
    if uniform:
        torch.nn.init.zeros_(model.lm_head.weight)  # tied to the embeddings: all logits 0
    return save_model(model, corpus["root"] / name, tokenizer_dir=corpus["tok"])


def test_uniform_model_gives_exact_loss_and_bits_per_byte(corpus):
    model_dir = _model_dir(corpus, "uniform", uniform=True)
    text = corpus["val"].read_text(encoding="utf-8")
    r = evaluate_lm(model_dir, corpus["val"], seq_len=48, batch_size=3)
    from llmchain.tokenizer import load_tokenizer

    tok = load_tokenizer(corpus["tok"])
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    vocab = len(tok)
    assert r["tokens"] == n_tokens  # every token of the text predicted exactly once
    assert r["bytes"] == len(text.encode("utf-8"))
    assert r["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert r["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(n_tokens * math.log2(vocab) / r["bytes"], rel=1e-6)


def test_loss_matches_one_forward_pass(corpus):
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    model_dir = _model_dir(corpus, "random", uniform=False)
    tok = load_tokenizer(corpus["tok"])
    ids = [tok.eos_token_id] + tok("To be, or not to be: that is the question.", add_special_tokens=False)["input_ids"]
    (corpus["root"] / "line.txt").write_text("To be, or not to be: that is the question.", encoding="utf-8")
    r = evaluate_lm(model_dir, corpus["root"] / "line.txt", seq_len=64)
    x = torch.tensor([ids])
    _, loss = load_model(model_dir)(x[:, :-1], targets=x[:, 1:])
    assert r["tokens"] == len(ids) - 1
    assert r["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    # shorter windows: each token still predicted once, with less context
    short = evaluate_lm(model_dir, corpus["root"] / "line.txt", seq_len=4)
    assert short["tokens"] == r["tokens"] and short["loss"] != pytest.approx(r["loss"], rel=1e-6)


def test_shards_and_text_file_agree(corpus):
    model_dir = _model_dir(corpus, "uniform2", uniform=True)
    on_shards = evaluate_lm(model_dir, corpus["shards"], seq_len=32)
    on_text = evaluate_lm(model_dir, corpus["val"], seq_len=32)
    # the val split is the same text; its shards also count the EOS before the document
    assert on_shards["bytes"] == on_text["bytes"]
    assert abs(on_shards["tokens"] - on_text["tokens"]) <= 1
    assert on_shards["bits_per_byte"] == pytest.approx(on_text["bits_per_byte"], rel=0.01)


def test_max_tokens(corpus):
    model_dir = _model_dir(corpus, "uniform3", uniform=True)
    r = evaluate_lm(model_dir, corpus["val"], max_tokens=50, seq_len=16)
    assert r["tokens"] == 50 and r["bytes_exact"] and 0 < r["bytes"] < 400


def test_windows_cover_each_token_once():
    tokens = np.arange(11)
    spans = windows(tokens, 4)
    predicted = [t for s, e in spans for t in range(s + 1, e)]
    assert predicted == list(range(1, 11))


@pytest.mark.parametrize("n,seq_len,stride", [(11, 4, 1), (11, 4, 3), (12, 4, 2), (2, 4, 2), (5, 4, 4), (40, 7, 3)])
def test_strided_windows_score_each_token_once(n, seq_len, stride):
    tokens = np.arange(n)
    spans = strided_windows(tokens, seq_len, stride)
    scored = [t for s, e, skip in spans for t in range(s + 1 + skip, e)]
    assert scored == list(range(1, n))  # every target exactly once, in order
    for s, e, skip in spans:
        assert e - 1 - s <= seq_len  # no window longer than the model is fed
        if s > 0:  # after the first window: seq_len - stride tokens of context, at most `stride` scored
            assert skip == seq_len - stride and e - (s + 1 + skip) <= stride
    if stride == seq_len:
        assert [(s, e) for s, e, _ in spans] == windows(tokens, seq_len)


def test_stride_equal_to_window_is_the_plain_eval_and_smaller_strides_use_more_context(corpus):
    model_dir = _model_dir(corpus, "random2", uniform=False)
    plain = evaluate_lm(model_dir, corpus["val"], seq_len=16, batch_size=4)
    same = evaluate_lm(model_dir, corpus["val"], seq_len=16, batch_size=4, stride=16)
    assert same["loss"] == plain["loss"] and same["tokens"] == plain["tokens"] and same["stride"] == 16
    slid = evaluate_lm(model_dir, corpus["val"], seq_len=16, batch_size=4, stride=4)
    assert slid["tokens"] == plain["tokens"] and slid["bytes"] == plain["bytes"] and slid["stride"] == 4
    assert slid["loss"] != pytest.approx(plain["loss"], rel=1e-6)
    # stride 1 = every token scored with a full window of context: one forward per token, by hand
    from llmchain.model.io import load_model

    model = load_model(model_dir)
    x = torch.tensor([[5, 9, 12, 7, 30, 2, 41, 8, 3, 17]])
    ids = x[0].numpy()
    nats = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            ctx = x[:, max(t - 4, 0):t]
            nats -= float(torch.log_softmax(model(ctx)[0][0, -1].float(), -1)[ids[t]])
    from llmchain.eval.perplexity import loss_sums

    with torch.no_grad():
        got, count = loss_sums(model, ids, strided_windows(ids, 4, 1), 3, torch.device("cpu"))
    assert count == len(ids) - 1 and got == pytest.approx(nats, rel=1e-5)


def test_errors_name_the_problem(corpus, tmp_path):
    model_dir = _model_dir(corpus, "uniform4", uniform=True)
    with pytest.raises(UserError, match="no such file"):
        evaluate_lm(model_dir, tmp_path / "missing.txt")
    with pytest.raises(UserError, match="not a model directory"):
        evaluate_lm(tmp_path, corpus["val"])
    with pytest.raises(UserError, match="context"):
        evaluate_lm(model_dir, corpus["val"], seq_len=10_000)
    with pytest.raises(UserError, match="--stride 0"):
        evaluate_lm(model_dir, corpus["val"], seq_len=16, stride=0)
    with pytest.raises(UserError, match="--stride 17"):
        evaluate_lm(model_dir, corpus["val"], seq_len=16, stride=17)
    (tmp_path / "notshards").mkdir()
    with pytest.raises(UserError, match="shards"):
        evaluate_lm(model_dir, tmp_path / "notshards")


def test_cli_stride_reaches_the_report(corpus, tmp_path):
    import json

    from conftest import run_cli

    model_dir = _model_dir(corpus, "random_cli", uniform=False)
    code, _, err = run_cli("eval", "lm", "--model", str(model_dir), "--data", str(corpus["shards"]), "--seq-len",
                           "16", "--stride", "4", "--baseline", "none", "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["config"]["stride"] == 4 and report["systems"][0]["stride"] == 4
    code, _, err = run_cli("eval", "lm", "--model", str(model_dir), "--data", str(corpus["shards"]), "--seq-len",
                           "16", "--stride", "17", "--baseline", "none", "-o", str(tmp_path / "ev2"))  # fmt: skip
    assert code == 2 and "--stride 17" in err


@pytest.mark.parametrize("stride", [None, 8])
def test_per_window_sums_tile_the_text_and_match_one_forward_per_window(corpus, stride):
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    model_dir = _model_dir(corpus, "random-w", uniform=False)
    # the first 600 tokens of the val text (a text file: their bytes are counted exactly)
    r = evaluate_lm(model_dir, corpus["val"], seq_len=32, batch_size=8, stride=stride, max_tokens=600,
                    per_window=True)
    w = r["windows"]
    assert r["tokens"] == 600 and w["nats"].sum() == pytest.approx(r["loss"] * r["tokens"], rel=1e-9)
    assert int(w["tokens"].sum()) == r["tokens"] and int(w["bytes"].sum()) == r["bytes"]
    # the first window by hand: [EOS] + the first 32 val tokens, all 32 targets scored
    tok = load_tokenizer(corpus["tok"])
    text = corpus["val"].read_text(encoding="utf-8")
    ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:32]
    x = torch.tensor([ids])
    with torch.no_grad():
        _, loss = load_model(model_dir)(x[:, :-1], targets=x[:, 1:])
    assert w["nats"][0] == pytest.approx(float(loss) * 32, rel=1e-5)
    assert w["bytes"][0] == len(tok.decode(ids[1:]).encode("utf-8"))  # ASCII: the decoded window's bytes


def test_eval_lm_intervals_are_paired_resamples_of_the_windows(corpus):
    from llmchain.eval.bootstrap import resample_indices
    from llmchain.eval.lm import evaluate_language_model

    model_dir = _model_dir(corpus, "random-ci", uniform=False)
    report = evaluate_language_model(corpus["shards"], model_dir, orders=(3,), seq_len=32, batch_size=8)
    model, tri = report["systems"]
    w = evaluate_lm(model_dir, corpus["shards"], seq_len=32, batch_size=8, per_window=True)["windows"]
    # direct recomputation: the same 1000 resamples of the windows, bits/byte = Σ nats / ln 2 / Σ bytes
    idx = resample_indices(len(w["nats"]), 1000, 0)
    draws = [w["nats"][i].sum() / math.log(2) / w["bytes"][i].sum() for i in idx]
    assert model["ci"]["bits_per_byte"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])), rel=1e-9)
    loss_draws = [w["nats"][i].sum() / w["tokens"][i].sum() for i in idx]
    assert model["ci"]["loss"] == pytest.approx(list(np.percentile(loss_draws, [2.5, 97.5])), rel=1e-9)
    for s in (model, tri):
        low, high = s["ci"]["bits_per_byte"]
        assert low < s["bits_per_byte"] < high and high - low < 0.5 * s["bits_per_byte"]
    # the random model is far worse than the trigram: intervals apart, and a note says so
    assert tri["ci"]["bits_per_byte"][1] < model["ci"]["bits_per_byte"][0]
    assert any("worse than the best baseline" in n for n in report["notes"])
    assert any("paired bootstrap over" in n for n in report["notes"])


def test_eval_lm_baselines_alone_get_chunk_intervals(corpus):
    from llmchain.eval.lm import CHUNK_SYMBOLS, evaluate_language_model

    root = corpus["root"]
    text = (root / "all.txt").read_text(encoding="utf-8")
    (root / "train.txt").write_text(text[:27_000], encoding="utf-8")
    report = evaluate_language_model(corpus["val"], None, orders=(3,), train_text=root / "train.txt")
    (tri,) = report["systems"]
    low, high = tri["ci"]["bits_per_byte"]
    assert low < tri["bits_per_byte"] < high
    assert any(f"chunks of {CHUNK_SYMBOLS} bytes" in n for n in report["notes"])
