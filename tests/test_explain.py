"""Explanations: IG and occlusion find the word a small trained classifier decides by, IG converges,
beats random on ERASER's measures; LM surprisal matches the model's loss; HTML is self-contained and
CJK-safe; bad input is a one-line error."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from conftest import run_cli
from llmchain.cli import main
from llmchain.explain.classify import explain_text, log_odds
from llmchain.explain.faithfulness import measure_faithfulness

POS, NEG = ["good", "great", "superb"], ["bad", "awful", "dull"]
FILL = "the a movie film plot actor scene was is and it this story very quite rather".split()


def keyword_texts(rng: random.Random, n: int) -> list[tuple[str, int]]:
    """Filler words with one sentiment word inserted somewhere: the label is that word's."""
    out = []
    for _ in range(n):
        lab = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(4, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if lab else NEG))
        out.append((" ".join(words), int(lab)))
    return out


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT on MiniLM's vocabulary, trained for 55 steps on the keyword task (~2 s)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llmchain.model.classifier import pad_batch, save_classifier
    from llmchain.train.classify import minilm_dir

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on any machine, and no stalls on a busy one
    try:
        vocab = minilm_dir()
        tok = AutoTokenizer.from_pretrained(vocab)
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_labels=2)  # fmt: skip
        model = BertForSequenceClassification(cfg)
        data = keyword_texts(random.Random(0), 2000)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for step in range(55):
            batch = data[step * 32 : step * 32 + 32]
            x, mask = pad_batch(tok([t for t, _ in batch])["input_ids"], tok.pad_token_id)
            loss = model(input_ids=x, attention_mask=mask, labels=torch.tensor([y for _, y in batch])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = save_classifier(model.eval(), tok, tmp_path_factory.mktemp("clf") / "best", {0: "neg", 1: "pos"},
                              tokenizer_dir=vocab)  # fmt: skip
    finally:
        torch.set_num_threads(prev)
    return out


@pytest.fixture(scope="module")
def clf(clf_dir):
    from llmchain.model.classifier import load_classifier

    c = load_classifier(clf_dir)
    texts = keyword_texts(random.Random(1), 100)
    acc = sum(p["label"] == ("pos" if y else "neg") for p, (_, y) in zip(c.predict([t for t, _ in texts]), texts,
                                                                           strict=True)) / len(texts)  # fmt: skip
    assert acc > 0.95  # the fixture learned the task, so there is something to find
    return c


def test_log_odds_is_log_p_over_one_minus_p():
    logits = torch.tensor([[0.3, -1.2, 2.0], [5.0, 5.0, -3.0]])
    p = logits.softmax(-1)
    assert torch.allclose(log_odds(logits), (p / (1 - p)).log(), atol=1e-6)


def test_ig_and_occlusion_find_the_deciding_word(clf):
    ex = explain_text(clf, "this story is quite superb and the actor very", methods=("ig", "occlusion"))
    assert ex.label == "pos"
    words = [ex.tokens.text[a:b] for a, b in ex.tokens.spans]
    for method in ("ig", "occlusion"):
        top = max(range(len(words)), key=lambda k: ex.scores[method][k])
        assert words[top] == "superb", (method, list(zip(words, ex.scores[method], strict=True)))
    # completeness: the attributions add up to the change in log-odds from the baseline, within the delta
    assert abs(sum(ex.scores["ig"]) - ex.ig_total) <= ex.ig_delta + 1e-5
    assert ex.ig_delta <= 0.01 * abs(ex.ig_total)
    assert all(ex.scores["ig"][k] == 0.0 for k, s in enumerate(ex.tokens.special) if s)


def test_ig_beats_random_on_comprehensiveness_and_sufficiency(clf):
    texts = [t for t, y in keyword_texts(random.Random(2), 40) if y == 1][:8]  # the positive word decides
    res = measure_faithfulness(clf, texts, seed=0)
    ig, rnd = res["mean"]["ig"], res["mean"]["random"]
    assert ig["comprehensiveness"] > rnd["comprehensiveness"] + 0.1
    assert ig["sufficiency"] < rnd["sufficiency"] - 0.1
    assert res["ig_beats_random"]["comprehensiveness"] >= 0.75
    assert res["ig_delta_relative_median"] <= 0.01


def test_cli_writes_a_self_contained_cjk_safe_heatmap_and_json(clf_dir, tmp_path, capsys):
    train = tmp_path / "train.tsv"
    rows = keyword_texts(random.Random(3), 200)
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{'pos' if y else 'neg'}\n" for t, y in rows), encoding="utf-8")
    long_text = "superb " + "the film " * 80  # over the model's 64 positions
    out = tmp_path / "ex"
    rc = main(["explain", "classify", "--model", str(clf_dir), "电影 <b>很好</b> & great", long_text,
               "--baseline-train", str(train), "--faithfulness", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "truncated: 64 of" in printed
    page = (out / "explain.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "<script" not in page and "http" not in page.lower()
    assert "电" in page and "好" in page and "&lt;" in page and "<b>很" not in page  # text escaped, CJK as is
    assert "truncated</b>: the model reads 64 of" in page
    assert "TF-IDF + LR baseline" in page
    data = json.loads((out / "explanations.json").read_text(encoding="utf-8"))
    assert data[0]["label"] == "pos" and data[1]["truncated"] is True and data[1]["tokens_total"] > 64
    assert {t["token"] for t in data[0]["tokens"] if not t["special"]} >= {"电", "影", "great"}
    top_ngram = data[0]["baseline_tfidf_lr"][0]
    assert top_ngram["ngram"] == "great" and top_ngram["weight"] > 0
    assert set(data[0]["faithfulness"]) == {"ig", "occlusion", "random"}
    assert (out / "manifest.json").is_file()
    per_text = sorted((out / "texts").glob("*.html"))  # one self-contained page per text too
    assert [p.name for p in per_text] == ["001.html", "002.html"] and "电" in per_text[0].read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["explain", "classify", "--model", "{clf}", ""], "empty; nothing to explain"),
    (["explain", "classify", "--model", "{clf}", "fine", "--label", "maybe"], "not a label of this classifier"),
    (["explain", "classify", "--model", "{clf}", "fine", "--methods", "shap"], "expected ig, occlusion or random"),
    (["explain", "classify", "--model", "{tmp}", "fine"], "not a model directory"),
    (["explain", "lm", "--model", "{tmp}", "fine"], "tokenizer"),
])  # fmt: skip
def test_bad_input_is_a_one_line_error(clf_dir, tmp_path, capsys, argv, message):
    rc = main([a.replace("{clf}", str(clf_dir)).replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from serve_fixtures import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("lm"), None, seed=3)


def test_surprisal_matches_the_models_loss_and_merges_split_characters(lm_dir, tmp_path, capsys):
    from llmchain.explain.lm import surprisal
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    model, tok = load_model(lm_dir), load_tokenizer(lm_dir)
    text = "To be, or not to be 是谁"
    ex = surprisal(model, tok, text)
    ids = torch.tensor([ex.ids])
    with torch.no_grad():
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
    bits = ex.scores["surprisal_bits"]
    assert bits[0] is None
    assert sum(bits[1:]) / len(bits[1:]) == pytest.approx(float(loss) / math.log(2), rel=1e-5)
    assert main(["explain", "lm", "--model", str(lm_dir), text, "--out", str(tmp_path / "o")]) == 0
    page = (tmp_path / "o" / "explain.html").read_text(encoding="utf-8")
    # a CJK character split over several byte-level tokens shows once, as the character
    assert page.count(">是</span>") == 1 and page.count(">谁</span>") == 1


def test_continuation_attribution_adds_up(lm_dir):
    from llmchain.explain.lm import attribute_continuation
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    model, tok = load_model(lm_dir), load_tokenizer(lm_dir)
    ex = attribute_continuation(model, tok, "To be, or not to be", max_new_tokens=4, n_steps=64)
    assert ex.continuation is not None and len(ex.scores["ig"]) == ex.prompt_tokens == len(ex.ids)
    cont = ex.continuation_ids
    assert cont and tok.decode(cont, skip_special_tokens=True) == ex.continuation
    pad = tok.pad_token_id
    with torch.no_grad():
        def logp(prompt_ids):
            x = torch.tensor([prompt_ids + cont])
            lp = model(x)[0][0, len(prompt_ids) - 1 : -1].log_softmax(-1)
            return float(lp.gather(-1, torch.tensor(cont)[:, None]).sum())

        total = logp(ex.ids) - logp([pad] * len(ex.ids))
    assert sum(ex.scores["ig"]) == pytest.approx(total, abs=max(ex.ig_delta, 1e-6) + 1e-4)
    assert ex.ig_delta < 0.05 * max(abs(total), 1.0)


def test_our_decoder_classifier_is_explained_too(lm_dir, tmp_path):
    """A classifier on our Llama trunk (random head): IG's attributions add up, occlusion runs, specials none."""
    from llmchain.model.classifier import DecoderClassifier, load_classifier, save_classifier
    from llmchain.model.io import load_model
    from llmchain.tokenizer import load_tokenizer

    torch.manual_seed(0)
    net = DecoderClassifier.from_causal_lm(load_model(lm_dir, dtype=torch.float32), 3)
    out = save_classifier(net, load_tokenizer(lm_dir), tmp_path / "dec", {0: "x", 1: "y", 2: "z"}, tokenizer_dir=lm_dir)
    clf = load_classifier(out)
    ex = explain_text(clf, "To be, or not to be 是谁", label="y", methods=("ig", "occlusion"))
    assert ex.label == "y" and len(ex.scores["occlusion"]) == len(ex.tokens.ids)
    assert abs(sum(ex.scores["ig"]) - ex.ig_total) <= ex.ig_delta + 1e-5
    assert ex.ig_delta <= max(0.01 * abs(ex.ig_total), 1e-4) or ex.ig_steps == 800


def test_v1_explain_on_a_classifier_server(clf_dir):
    import httpx

    from llmchain.serve.api import ServeOptions, create_app
    from serve_fixtures import LiveServer

    with LiveServer(create_app(ServeOptions(model_dir=str(clf_dir), served_model_name="clf"))) as srv:
        r = httpx.post(srv.url + "/v1/explain", json={"input": ["the plot was superb", "很好 " * 100]}, timeout=120)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data[0]["label"] == "pos" and data[1]["truncated"] is True
        toks = [t for t in data[0]["tokens"] if not t["special"]]
        assert max(toks, key=lambda t: t["ig"])["token"] == "superb"
        assert max(toks, key=lambda t: t["occlusion"])["token"] == "superb"
        for body, param in (({"input": ""}, "input"), ({"input": "fine", "label": "maybe"}, "label"),
                            ({"input": ["a"] * 9}, "input")):  # fmt: skip
            r = httpx.post(srv.url + "/v1/explain", json=body, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert httpx.post(srv.url + "/v1/explain", json={"input": "x", "methods": ["shap"]}).status_code in (400, 422)


def test_model_card_of_a_classifier_shows_explained_examples(clf_dir, tmp_path):
    """`llmchain report` on a classifier: eval classify's test texts explained in the card, heatmaps beside."""
    import json

    rng = random.Random(7)
    data = tmp_path / "test.jsonl"
    rows = keyword_texts(rng, 12)
    data.write_text("".join(json.dumps({"text": t, "label": ["neg", "pos"][y]}) + "\n" for t, y in rows))
    code, _, err = run_cli("eval", "classify", "--model", str(clf_dir), "--train", str(data), "--test", str(data),
                           "--out", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("report", str(clf_dir), "--out", str(tmp_path / "card"), "--eval", str(tmp_path / "eval"))
    assert code == 0, err
    md = (tmp_path / "card" / "report.md").read_text(encoding="utf-8")
    assert "## Explained examples" in md and "(explained.html)" in md
    section = md.split("## Explained examples", 1)[1].split("\n## ", 1)[0]
    assert sum(rows[i][0][:40] in section for i in range(3)) == 3  # the first three test texts
    facts = json.loads((tmp_path / "card" / "report.json").read_text(encoding="utf-8"))
    examples = facts["explanations"]["examples"]
    assert len(examples) == 3
    # the token that weighs most is the sentiment word that decides the label
    assert all(e["top_tokens"][0][0] in POS + NEG for e in examples), [e["top_tokens"][:2] for e in examples]
    html = (tmp_path / "card" / "explained.html").read_text(encoding="utf-8")
    assert html.count("<section>") == 3 and "<script" not in html
