"""Classification: reading labelled tables, label maps, metrics, length-bucketed batches, MiniLM on SST-2
(beats chance in a short run), our decoder with a classification head (opens in transformers with the
same logits), early stopping, `llmchain predict`, and one-line errors for the user's mistakes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, sigterm_at
from llmchain.config import ClassifyConfig
from llmchain.data.tables import LabelMap, read_labelled
from llmchain.errors import DataError, UserError
from llmchain.model.classifier import load_classifier
from llmchain.train.classify import BucketedBatches, finetune_classifier, metrics_from_confusion, minilm_dir
from llmchain.train.distributed import teardown_runtime

pytestmark = pytest.mark.usefixtures("fresh_runtime")  # conftest: the loop's runtime is per process


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, shared_data) -> dict[str, Path]:
    """Slices of SST-2: 320 training sentences, 200 dev sentences (TSV with header, as shipped)."""
    root = tmp_path_factory.mktemp("sst2")
    out = {}
    for name, src, n in (("train", "train.tsv", 320), ("dev", "dev.tsv", 200)):
        lines = (shared_data / "sst2" / src).read_text(encoding="utf-8").splitlines()
        (root / f"{name}.tsv").write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
        out[name] = root / f"{name}.tsv"
    return out


# --- data, labels, metrics, batches -----------------------------------------------------------------


def test_reads_tsv_csv_jsonl_with_auto_columns_and_rejects_bad_rows(tmp_path, shared_data):
    sst = read_labelled(shared_data / "sst2/dev.tsv")
    assert (sst.text_column, sst.label_column, len(sst)) == ("sentence", "label", 872)
    trec = read_labelled(shared_data / "trec/train.tsv", label_column="coarse_label")
    assert len(trec) == 5452 and set(trec.labels) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    waimai = read_labelled(shared_data / "waimai_10k_zh/waimai_10k.csv")
    assert waimai.text_column == "review" and set(waimai.labels) == {"0", "1"}
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "good", "label": 1}\n{"text": "", "label": 0}\nnot json\n{"text": "bad", "label": 0.0}\n')
    d = read_labelled(p)
    assert d.texts == ["good", "bad"] and d.labels == ["1", "0"]
    assert [r["line"] for r in d.rejected] == [2, 3]
    with pytest.raises(DataError, match=r"x.jsonl:2: empty or missing text"):
        read_labelled(p, strict=True)


def test_label_map_orders_integers_numerically_and_rejects_unknown_labels():
    m = LabelMap.from_labels(["10", "2", "0", "2"])
    assert m.names == ["0", "2", "10"] and m.label2id == {"0": 0, "2": 1, "10": 2}
    assert m.class_weights([0, 0, 0, 1]) == pytest.approx([4 / 9, 4 / 3, 0.0])
    with pytest.raises(UserError, match="do not occur in the training data"):
        m.encode(["0", "7"], "val.tsv")


def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.6, y, torch.randint(0, 4, (300,), generator=g))
    p[p == 3] = 2  # class 3 is never predicted: precision 0 by convention
    cm = torch.tensor(confusion_matrix(y, p, labels=range(4)))
    ours = metrics_from_confusion(cm)
    prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((prec, rec, f1))


def test_bucketed_batches_cover_every_row_each_epoch_and_are_reproducible():
    lengths = [(i * 37) % 50 + 1 for i in range(103)]
    ids = [[5] * n for n in lengths]
    src = BucketedBatches(ids, list(range(103)), batch_size=8, seed=3, pad_id=0, pool=4)
    assert src.steps_per_epoch == 13
    for epoch in range(2):
        seen = [int(y) for s in range(13) for y in src.get_batch(epoch * 13 + s, 0, 1)["labels"]]
        assert set(seen) == set(range(103)) and len(seen) == 104  # one row repeated to fill the last batch
    again = BucketedBatches(ids, list(range(103)), batch_size=8, seed=3, pad_id=0, pool=4)
    assert torch.equal(again.get_batch(20, 0, 1)["input_ids"], src.get_batch(20, 0, 1)["input_ids"])
    b = src.get_batch(5, 0, 1)
    assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())  # padded to its own longest
    halves = [src.get_batch(5, r, 2)["labels"].tolist() for r in range(2)]
    assert halves[0] + halves[1] == b["labels"].tolist()  # ranks split the global batch


# --- training -----------------------------------------------------------------------------------------


def test_minilm_loads_offline():
    from transformers import AutoConfig

    d = minilm_dir()
    assert AutoConfig.from_pretrained(d, local_files_only=True).model_type == "bert"


def test_minilm_on_sst2_beats_chance_and_predict_writes_scores(sst2, tmp_path):
    cfg = ClassifyConfig(model="minilm", train=str(sst2["train"]), val=str(sst2["dev"]), out=str(tmp_path / "run"),
                         epochs=2, lr=1e-4, batch_size=8, max_length=64, precision="bf16", log_every=100,
                         threads=1, save_every=10_000)  # fmt: skip
    s = finetune_classifier(cfg, quiet=True)
    assert s["best_val"]["accuracy"] >= 0.70, s["best_val"]  # chance is ~0.5 on this balanced slice
    run = tmp_path / "run"
    vals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("split") == "val"]
    assert len(vals) == 2 and {"accuracy", "precision", "recall", "f1", "loss"} <= vals[0].keys()
    assert (run / "confusion-epoch-1.png").stat().st_size > 1000 and (run / "confusion-epoch-2.png").is_file()
    best = run / "best"
    man = json.loads((best / "manifest.json").read_text())
    assert man["kind"] == "classifier" and man["labels"] == ["0", "1"]
    assert json.loads((best / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    clf = load_classifier(best)
    preds = clf.predict(["a gorgeous, witty, heartfelt film", "a tedious, lifeless mess"])
    assert abs(sum(preds[0]["scores"].values()) - 1) < 1e-5
    code, out, err = run_cli("predict", "--model", str(best), "-i", str(sst2["dev"]), "-o", str(tmp_path / "p.csv"))
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert len(rows) == 200 and {"sentence", "label", "predicted_label", "score_0", "score_1"} <= rows[0].keys()
    acc = sum(r["label"] == r["predicted_label"] for r in rows) / len(rows)
    assert acc == pytest.approx(s["best_val"]["accuracy"], abs=0.02)  # fp32 inference vs bf16 eval


@pytest.fixture(scope="module")
def tiny_decoder(tiny_model_dir, shared_data) -> Path:
    text = (shared_data / "sst2/dev.tsv").read_text(encoding="utf-8")  # as plain text, header and all
    return tiny_model_dir(text, 400, hidden_size=32, intermediate_size=64, max_position_embeddings=128,
                          eos_token_id=0, pad_token_id=1)  # fmt: skip


def test_decoder_classifier_opens_in_transformers_with_the_same_logits(tiny_decoder, sst2, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = ClassifyConfig(model=str(tiny_decoder), train=str(sst2["train"]), val=str(sst2["dev"]),
                         out=str(tmp_path / "run"), max_steps=4, lr=1e-3, precision="fp32", max_length=48,
                         threads=1)  # fmt: skip
    finetune_classifier(cfg, quiet=True)
    best = tmp_path / "run/best"
    ours = load_classifier(best)
    texts = ["a gorgeous film", "dull , dull , dull .", "it is what it is"]
    hf = AutoModelForSequenceClassification.from_pretrained(best, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(best, local_files_only=True)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**enc).logits.softmax(-1)
    torch.testing.assert_close(ours.predict_proba(texts), theirs, rtol=1e-4, atol=1e-5)


def test_mean_pooling_is_saved_loaded_and_ignores_padding(tiny_decoder, sst2, tmp_path):
    from llmchain.model.classifier import DecoderClassifier

    cfg = ClassifyConfig(model=str(tiny_decoder), train=str(sst2["train"]), val=str(sst2["dev"]),
                         out=str(tmp_path / "run"), max_steps=4, lr=1e-3, precision="fp32", max_length=48,
                         threads=1, pooling="mean")  # fmt: skip
    finetune_classifier(cfg, quiet=True)
    assert json.loads((tmp_path / "run/best/config.json").read_text())["classifier_pooling"] == "mean"
    clf = load_classifier(tmp_path / "run/best")
    assert isinstance(clf.model, DecoderClassifier) and clf.model.pooling == "mean"
    texts = ["a gorgeous film", "dull , dull , dull . the worst thing i have seen all year"]
    together = clf.predict_proba(texts, batch_size=2)  # the short text is padded beside the long one
    alone = torch.cat([clf.predict_proba([t]) for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    ids = torch.tensor([clf.encode([texts[0]])[0]])
    h = clf.model.model(ids)
    torch.testing.assert_close(clf.model(ids, torch.ones_like(ids)), clf.model.score(h.mean(1)))
    with pytest.raises(UserError, match="pooling 'mean' is for our decoders"):
        finetune_classifier(cfg.model_copy(update={"model": "minilm", "out": str(tmp_path / "enc")}), quiet=True)
    with pytest.raises(UserError, match="unknown classifier pooling"):
        DecoderClassifier(clf.model.config, 2, pooling="max")


def test_choose_threshold_maximises_macro_f1_and_prefers_argmax_on_ties():
    from llmchain.train.classify import choose_threshold

    # Class 1 scores low overall: every positive sits at 0.30-0.40, every negative below 0.25.
    p1 = torch.tensor([0.10, 0.20, 0.24, 0.30, 0.35, 0.40])
    t, f1 = choose_threshold(p1, [0, 0, 0, 1, 1, 1])
    assert 0.24 < t <= 0.30 and f1 == pytest.approx(1.0)
    t, _ = choose_threshold(torch.tensor([0.1, 0.9]), [0, 1])  # every t in (0.1, 0.9] is perfect
    assert t == 0.5


def test_val_threshold_is_saved_and_used_by_predict(tiny_decoder, sst2, tmp_path):
    cfg = ClassifyConfig(model=str(tiny_decoder), train=str(sst2["train"]), val=str(sst2["dev"]),
                         test=str(sst2["dev"]), out=str(tmp_path / "run"), max_steps=4, lr=1e-3, precision="fp32",
                         max_length=48, threads=1, threshold="val")  # fmt: skip
    s = finetune_classifier(cfg, quiet=True)
    t = s["threshold"]["threshold"]
    assert json.loads((tmp_path / "run/best/config.json").read_text())["classifier_threshold"] == t
    assert s["threshold"]["val_f1"] >= s["threshold"]["val_f1_argmax"] - 1e-9
    assert s["test"]["f1"] == pytest.approx(s["threshold"]["val_f1"], abs=1e-6)  # test = val file here
    clf = load_classifier(tmp_path / "run/best")
    texts = [r.split("\t")[0] for r in sst2["dev"].read_text(encoding="utf-8").splitlines()[1:40]]
    probs = clf.predict_proba(texts)
    want = [clf.labels[int(p[1] >= t)] for p in probs]
    assert [p["label"] for p in clf.predict(texts)] == want
    with pytest.raises(UserError, match="decision threshold needs two labels"):
        type(clf)(clf.model, clf.tokenizer, ["a", "b", "c"], 16, threshold=0.5)


def test_early_stopping_after_patience_evals_without_better_f1(tiny_decoder, sst2, tmp_path):
    # A learning rate too small to move the weights: F1 never improves after the first epoch.
    cfg = ClassifyConfig(model=str(tiny_decoder), train=str(sst2["train"]), val=str(sst2["dev"]),
                         out=str(tmp_path / "run"), epochs=5, lr=1e-12, precision="fp32", patience=1,
                         batch_size=64, max_length=32, threads=1)  # fmt: skip
    s = finetune_classifier(cfg, quiet=True)
    assert s["early_stopped"] and s["epochs_run"] == 2 and s["best_epoch"] == 1


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer (random weights)."""
    import shutil

    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(root)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_dir() / name).is_file():
            shutil.copy(minilm_dir() / name, root / name)
    return root


def test_train_rows_embedding_trains_like_the_full_table(tiny_bert, sst2, tmp_path):
    from safetensors.torch import load_file

    kw = dict(model=str(tiny_bert), train=str(sst2["train"]), val=str(sst2["dev"]), epochs=2, lr=3e-3,
              weight_decay=0.1, precision="fp32", batch_size=32, max_length=48, threads=1, patience=0)
    runs = {}
    for rows in (True, False):
        cfg = ClassifyConfig(out=str(tmp_path / str(rows)), embedding_rows="used" if rows else "all", **kw)
        runs[rows] = finetune_classifier(cfg, quiet=True)
        teardown_runtime()
    a, b = (load_file(tmp_path / str(r) / "best/model.safetensors") for r in (True, False))
    assert a.keys() == b.keys() and "bert.embeddings.word_embeddings.weight" in a
    for k in a:  # same math: only the summation order of the gradient norm differs
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    emb0 = load_file(tiny_bert / "model.safetensors")["embeddings.word_embeddings.weight"]
    moved = (a["bert.embeddings.word_embeddings.weight"] != emb0).any(-1)
    assert moved[emb0.any(-1)].all(), "rows never seen in training still get AdamW's weight decay"
    assert runs[True]["best_val"]["accuracy"] == pytest.approx(runs[False]["best_val"]["accuracy"], abs=1e-9)


@pytest.mark.parametrize("base", ["decoder", "bert"])
def test_classify_resume_equals_uninterrupted(base, tiny_decoder, tiny_bert, sst2, tmp_path):

    from safetensors.torch import load_file

    kw = dict(model=str(tiny_decoder if base == "decoder" else tiny_bert), train=str(sst2["train"]), val=str(sst2["dev"]), epochs=3, lr=3e-3,
              precision="fp32", batch_size=64, max_length=32, threads=1, patience=0)  # 5 steps per epoch
    full = finetune_classifier(ClassifyConfig(out=str(tmp_path / "full"), **kw), quiet=True)
    teardown_runtime()
    with sigterm_at(BucketedBatches, 7):  # mid epoch 2
        cut = finetune_classifier(ClassifyConfig(out=str(tmp_path / "cut"), **kw), quiet=True)
    assert not cut["completed"] and cut["steps"] == 8
    teardown_runtime()
    resumed = finetune_classifier(ClassifyConfig(out=str(tmp_path / "cut"), resume="auto", **kw), quiet=True)
    assert resumed["completed"] and resumed["steps"] == 15
    history = [json.loads(p.read_text())["history"] for p in (tmp_path / "full" / "classify_state.json",
                                                               tmp_path / "cut" / "classify_state.json")]
    assert [h["step"] for h in history[1]] == [5, 10, 15]
    assert history[0] == history[1] and resumed["best_epoch"] == full["best_epoch"]
    a, b = (load_file(tmp_path / r / "best/model.safetensors") for r in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- user errors --------------------------------------------------------------------------------------


def test_classify_user_errors_are_one_line_exit_2(sst2, tmp_path):
    mismatch = tmp_path / "val3.tsv"
    mismatch.write_text("sentence\tlabel\ngreat\t1\nmeh\t2\n")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("review,stars\ngreat,5\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    header_only = tmp_path / "header.tsv"
    header_only.write_text("sentence\tlabel\n")
    three = tmp_path / "three.tsv"
    three.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{i % 3}\n" for i in range(30)))
    train = str(sst2["train"])
    cases = [
        (["--train", train, "--val", str(mismatch)], "labels ['2'] do not occur in the training data"),
        (["--train", str(nocol)], "cannot tell which column holds the label"),
        (["--train", train, "--val", str(nocol), "--label-column", "label"], "no label column 'label'"),
        (["--train", str(empty)], "the file is empty"),
        (["--train", str(header_only)], "no rows"),
        (["--train", str(tmp_path / "missing.tsv")], "file not found"),
        (["--train", str(three), "--threshold", "val"], "threshold 'val' needs two labels; the data has 3"),
    ]
    for args, message in cases:
        code, _, err = run_cli("finetune", "classify", "--model", "minilm", *args, "--out", str(tmp_path / "o"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = run_cli("predict", "--model", str(tmp_path), "hello")
    assert code == 2 and "not a model directory" in err


def test_headerless_files_train_evaluate_and_predict_by_column_index(tiny_bert, shared_data, tmp_path):
    """A headerless TSV with the label first (as CLUE / ChnSentiCorp / AG News ship): `--no-header` and
    column indices in finetune classify, eval classify and predict."""
    import csv
    import json

    rows = list(csv.reader((shared_data / "sst2/dev.tsv").read_text(encoding="utf-8").splitlines()[1:81],
                           delimiter="\t", quoting=csv.QUOTE_NONE))  # fmt: skip
    data = tmp_path / "noheader.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for text, label in rows), encoding="utf-8")
    code, _, err = run_cli("finetune", "classify", "--model", str(tiny_bert), "--train", str(data),
                           "--no-header", "--text-column", "1", "--label-column", "0", "--max-steps", "2",
                           "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert code == 0, err
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["label2id"].keys() == {"0", "1"}
    code, out, err = run_cli("eval", "classify", "--model", str(best), "--train", str(data), "--test", str(data),
                             "--no-header", "--text-column", "1", "--label-column", "0",
                             "--out", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == len(rows)
    code, out, err = run_cli("predict", "--model", str(best), "--input", str(data), "--no-header",
                             "--text-column", "1")  # fmt: skip
    assert code == 0, err
    preds = [json.loads(line) for line in out.splitlines()]
    assert [p["text"] for p in preds] == [text for text, _ in rows]
