"""Bootstrap intervals: they contain the point estimate, shrink with more items, agree with a direct
per-resample recomputation, and `compare` only calls a system better when intervals do not overlap."""

import numpy as np
import pytest

from llmchain.eval.bootstrap import (
    bootstrap,
    classification_intervals,
    compare,
    mean_intervals,
    resample_indices,
    verdicts,
)
from llmchain.eval.metrics import classification_metrics, generation_metrics


def _labels(n, acc, seed=0):
    rng = np.random.default_rng(seed)
    y = [str(x) for x in rng.integers(0, 3, n)]
    p = [t if rng.random() < acc else str((int(t) + 1) % 3) for t in y]
    return y, p


def test_classification_interval_matches_direct_recomputation():
    y, p = _labels(300, 0.8)
    labels = ["0", "1", "2"]
    ci = classification_intervals(y, p, labels, resamples=200, seed=3)

    def stat(idx):
        m = classification_metrics([y[i] for i in idx], [p[i] for i in idx], labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    direct = bootstrap(len(y), stat, resamples=200, seed=3)
    for metric in ("accuracy", "macro_f1"):
        assert ci[metric] == pytest.approx(direct[metric], abs=1e-12)
    point = classification_metrics(y, p, labels)
    assert ci["accuracy"][0] < point["accuracy"] < ci["accuracy"][1]
    assert ci["macro_f1"][0] < point["macro_f1"] < ci["macro_f1"][1]


def test_intervals_shrink_with_more_items_and_are_reproducible():
    small = classification_intervals(*_labels(100, 0.7), ["0", "1", "2"], resamples=300)
    large = classification_intervals(*_labels(3000, 0.7), ["0", "1", "2"], resamples=300)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]  # noqa: E731
    assert width(large) < width(small) / 3
    assert (resample_indices(50, 10, seed=1) == resample_indices(50, 10, seed=1)).all()
    assert mean_intervals({"x": [1.0] * 20}, resamples=50) == {"x": [1.0, 1.0]}


def test_compare_and_verdicts_refuse_to_rank_overlapping_intervals():
    assert compare([0.8, 0.9], [0.6, 0.7]) == "better"
    assert compare([0.6, 0.7], [0.8, 0.9]) == "worse"
    assert compare([0.6, 0.85], [0.8, 0.9]) == "overlap"
    assert compare([1.0, 1.2], [1.5, 1.6], higher_is_better=False) == "better"
    systems = [
        {"name": "model", "title": "model", "baseline": False, "acc": 0.82, "ci": {"acc": [0.80, 0.84]}},
        {"name": "nb", "title": "NB", "baseline": True, "acc": 0.81, "ci": {"acc": [0.79, 0.83]}},
        {"name": "maj", "title": "majority", "baseline": True, "acc": 0.5, "ci": {"acc": [0.48, 0.52]}},
    ]
    (line,) = verdicts(systems, "acc")
    assert "not separable" in line and "NB" in line
    systems[0]["ci"]["acc"] = [0.835, 0.85]
    assert "better than the best baseline (NB)" in verdicts(systems, "acc")[0]


def test_generation_metrics_carry_intervals_for_every_column():
    preds = ["the cat sat on the mat", "a dog runs", "hello world", "green grass grows", "red sun"] * 8
    refs = [["the cat sat on a mat"], ["the dog runs"], ["hello there world"], ["grass is green"], ["a red sun"]] * 8
    m = generation_metrics(preds, refs, resamples=200)
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"):
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi, key
    assert m["ci"]["rougeL"][1] - m["ci"]["rougeL"][0] > 0
    assert generation_metrics(preds, refs, resamples=0)["ci"] == {}
    # a resample of sentences that all score 0 (sacrebleu's own bootstrap raises a TypeError there)
    zero = generation_metrics(["x y", "z"], [["a b"], ["c"]], resamples=50)
    assert zero["ci"]["bleu"] == [0.0, 0.0]


def test_corpus_interval_equals_recomputing_bleu_on_each_resample():
    import sacrebleu

    from llmchain.eval.bootstrap import corpus_interval

    preds = ["the cat sat on the mat", "a dog runs fast", "hello world", "green grass grows", "red sun"] * 4
    refs = ["the cat sat on a mat", "the dog runs fast", "hello there world", "grass is green", "a red sun"] * 4
    metric = sacrebleu.metrics.BLEU()
    ci = corpus_interval(metric, preds, [refs], resamples=40, seed=5)
    direct = [sacrebleu.metrics.BLEU().corpus_score([preds[i] for i in idx], [[refs[i] for i in idx]]).score
              for idx in resample_indices(len(preds), 40, 5)]
    assert ci == pytest.approx([float(np.percentile(direct, 2.5)), float(np.percentile(direct, 97.5))])


def test_ratio_intervals_match_a_loop_over_the_same_resamples():
    from llmchain.eval.bootstrap import ratio_intervals, resample_indices

    rng = np.random.default_rng(3)
    num_a, num_b, den = rng.random(40) * 100, rng.random(40) * 50, rng.integers(10, 20, 40)
    ci = ratio_intervals({"a": num_a, "b": num_b}, den, scale=2.0, resamples=200, seed=5)
    idx = resample_indices(40, 200, 5)
    for name, num in (("a", num_a), ("b", num_b)):
        draws = [2.0 * num[i].sum() / den[i].sum() for i in idx]
        assert ci[name] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])), rel=1e-12)
    assert ratio_intervals({"a": []}, []) == {}
    with pytest.raises(ValueError):
        ratio_intervals({"a": num_a[:5]}, den)
