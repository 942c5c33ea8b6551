"""`llmchain eval classify`: metrics equal scikit-learn's, baselines on SST-2 and Chinese reviews, a
(tiny, untrained) classifier scored beside them, and one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import run_cli
from llmchain.eval.metrics import classification_metrics


def test_metrics_equal_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = random.Random(0)
    labels = ["a", "b", "c", "d"]
    y = [rng.choice(labels[:3]) for _ in range(300)]  # "d" never true: macro runs over classes present
    p = [t if rng.random() < 0.6 else rng.choice(labels) for t in y]
    m = classification_metrics(y, p, labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["confusion"] == confusion_matrix(y, p, labels=labels).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][lab]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][lab]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][lab]["support"] == sup[i]
    present = labels[:3]
    mp, mr, mf, _ = precision_recall_fscore_support(y, p, labels=present, average="macro", zero_division=0)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((mp, mr, mf))


def test_baselines_only_on_sst2(shared_data, tmp_path):
    d = shared_data / "sst2"
    code, out, err = run_cli("eval", "classify", "--train", str(d / "train.tsv"), "--test", str(d / "test.tsv"),
                             "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    acc = {s["name"]: s["accuracy"] for s in report["systems"]}
    assert 0.78 <= acc["naive_bayes"] <= 0.84 and 0.78 <= acc["tfidf_logreg"] <= 0.84
    assert 0.45 < acc["majority"] < 0.55
    assert report["n"] == 1821 and sum(map(sum, report["systems"][0]["confusion"])) == 1821
    assert "Naive Bayes" in out and "macro F1" in out
    for png in ("accuracy.png", "confusion.png", "manifest.json"):
        assert (tmp_path / "ev" / png).is_file()


def test_chinese_reviews_baselines(shared_data, tmp_path):
    lines = (shared_data / "waimai_10k_zh" / "waimai_10k.csv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    test_rows = rows[::6][:1000]
    train_rows = [r for i, r in enumerate(rows) if i % 6][:5000]
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join([header, *train_rows]) + "\n", encoding="utf-8")
    test.write_text("\n".join([header, *test_rows]) + "\n", encoding="utf-8")
    code, _, err = run_cli("eval", "classify", "--train", str(train), "--test", str(test), "-o", str(tmp_path / "ev"))
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["config"]["zh"] == "char"
    acc = {s["name"]: s["accuracy"] for s in report["systems"]}
    # character 1-2-grams: published bag-of-words baselines on waimai_10k are in the high 0.8s
    assert acc["naive_bayes"] > 0.82 and acc["tfidf_logreg"] > 0.82 and acc["majority"] < 0.7


def _tiny_classifier(tmp_path: Path, shared_data: Path, labels: list[str]) -> Path:
    """An untrained nano decoder classifier with a small BPE tokenizer (trained once per tmp dir)."""
    from llmchain.model.classifier import DecoderClassifier, save_classifier
    from llmchain.model.presets import preset_config
    from llmchain.tokenizer import load_tokenizer, train_tokenizer

    tok = tmp_path / "tok"
    if not tok.is_dir():
        text = tmp_path / "t.txt"
        text.write_text((shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8")[:30000], encoding="utf-8")
        train_tokenizer(text, 300, tok)
    model = DecoderClassifier(preset_config("nano", 300, eos_token_id=0, pad_token_id=1), len(labels))
    out = tmp_path / ("clf-" + "-".join(labels))
    return save_classifier(model, load_tokenizer(tok), out, dict(enumerate(labels)), tokenizer_dir=tok)


def test_model_beside_baselines_and_label_mismatch(shared_data, tmp_path):
    d = shared_data / "sst2"
    test = tmp_path / "test.tsv"
    test.write_text("\n".join((d / "test.tsv").read_text(encoding="utf-8").splitlines()[:151]) + "\n")
    train = tmp_path / "train.tsv"  # a slice keeps the baselines quick; they still beat an untrained model
    train.write_text("\n".join((d / "train.tsv").read_text(encoding="utf-8").splitlines()[:2001]) + "\n")
    clf = _tiny_classifier(tmp_path, shared_data, ["0", "1"])
    code, out, err = run_cli("eval", "classify", "--model", str(clf), "--train", str(train),
                             "--test", str(test), "-o", str(tmp_path / "ev"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    names = [s["name"] for s in report["systems"]]
    assert names == ["model", "naive_bayes", "tfidf_logreg", "majority"]
    model = report["systems"][0]
    assert sum(map(sum, model["confusion"])) == 150 and 0 <= model["accuracy"] <= 1
    assert report["model"] == str(clf.resolve())
    # an untrained model is no better than chance: the baselines show it
    assert report["systems"][1]["accuracy"] > model["accuracy"]
    bad = _tiny_classifier(tmp_path, shared_data, ["positive", "negative"])
    code, _, err = run_cli("eval", "classify", "--model", str(bad), "--train", str(train),
                           "--test", str(test), "-o", str(tmp_path / "ev2"))  # fmt: skip
    assert code == 2 and "share none" in err and err.count("\n") == 1


def test_one_line_errors(shared_data, tmp_path):
    d = shared_data / "sst2"
    cases = [
        ("--train", str(tmp_path / "nope.tsv"), "--test", str(d / "test.tsv")),
        ("--train", str(d / "train.tsv"), "--test", str(d / "test.tsv"), "--text-column", "review"),
        ("--train", str(d / "train.tsv"), "--test", str(d / "test.tsv"), "--model", str(tmp_path / "no-model")),
        ("--train", str(d / "SOURCE.md"), "--test", str(d / "test.tsv")),
    ]
    for args in cases:
        code, _, err = run_cli("eval", "classify", *args, "-o", str(tmp_path / "ev"))
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
