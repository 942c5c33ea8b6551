"""POST /v1/classify on a classifier dir (a tiny BertForSequenceClassification made here)."""

from __future__ import annotations

import httpx
import pytest

from llmchain.serve.api import ServeOptions, create_app
from serve_fixtures import LiveServer


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("classifier")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "food", "slow", "great", "the", "was"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, id2label={0: "neg", 1: "pos"},
                     label2id={"neg": 0, "pos": 1})  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_classify_endpoint(classifier_dir):
    with LiveServer(create_app(ServeOptions(model_dir=str(classifier_dir), served_model_name="clf"))) as srv:
        r = httpx.post(srv.url + "/v1/classify", json={"input": ["the food was good", "slow"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1]
        for d in data:
            assert d["label"] in ("neg", "pos") and abs(sum(d["scores"].values()) - 1) < 1e-5
        one = httpx.post(srv.url + "/v1/classify", json={"input": "the food was good"}).json()["data"]
        assert one[0]["scores"] == pytest.approx(data[0]["scores"])
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 400 and "classifier" in r.json()["error"]["message"]
        assert httpx.get(srv.url + "/v1/models").json()["data"][0]["id"] == "clf"
        r = httpx.post(srv.url + "/v1/classify", json={"input": ["good " * 5000]})  # truncated to the model's 64
        assert r.status_code == 200 and r.json()["data"][0]["label"] in ("neg", "pos")
        r = httpx.post(srv.url + "/v1/classify", content=rb'{"input": ["good \ud800"]}',
                       headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
