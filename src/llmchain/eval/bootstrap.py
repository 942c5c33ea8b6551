"""Bootstrap 95 % confidence intervals for the numbers in an eval table, and the one rule for calling a
system better: its interval lies wholly above the other's.

Every system of one table is resampled with the same item indices (a paired bootstrap: the same
resampled test set scores all systems), so the intervals of two systems differ only by the systems.
Intervals are percentile intervals of `resamples` resamples of the test items with replacement.
BLEU and chrF are corpus statistics, not means of item scores: each resample sums the items' sacrebleu
sentence statistics and recomputes the corpus score from the sums — what sacrebleu's own
`corpus_score(n_bootstrap=...)` does, but on our resample indices (so the intervals are paired with the
other metrics) and as percentile intervals like theirs. (sacrebleu 2.6's own bootstrap also fails with a
TypeError when a resample scores 0.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n] item indices drawn with replacement; the same (n, resamples, seed) gives the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(draws: Sequence[float] | np.ndarray, level: float = LEVEL) -> list[float]:
    a = np.asarray(draws, dtype=np.float64)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(a, tail)), float(np.percentile(a, 100 - tail))]


def bootstrap(n: int, statistic: Callable[[np.ndarray], Mapping[str, float]], *, resamples: int = RESAMPLES,
              seed: int = 0, level: float = LEVEL) -> dict[str, list[float]]:
    """{name: [low, high]} for each value `statistic(indices)` returns, over resampled index sets."""
    if n <= 0 or resamples <= 0:
        return {}
    draws: dict[str, list[float]] = {}
    for idx in resample_indices(n, resamples, seed):
        for k, v in statistic(idx).items():
            draws.setdefault(k, []).append(float(v))
    return {k: percentile_interval(v, level) for k, v in draws.items()}


def mean_intervals(per_item: Mapping[str, Sequence[float]], *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> dict[str, list[float]]:
    """Intervals of item means (ROUGE, exact match, per-item accuracy), all from the same resamples."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_item.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    if n == 0 or resamples <= 0:
        return {}
    idx = resample_indices(n, resamples, seed)
    return {k: percentile_interval(a[idx].mean(axis=1), level) for k, a in arrays.items()}


def ratio_intervals(numerators: Mapping[str, Sequence[float]], denominator: Sequence[float], *,
                    scale: float = 1.0, resamples: int = RESAMPLES, seed: int = 0,
                    level: float = LEVEL) -> dict[str, list[float]]:
    """Intervals of scale × Σ numerator / Σ denominator over resampled items, for each numerator.

    The ratio-of-sums statistics of language modelling: bits per byte = Σ nats / ln 2 / Σ bytes and loss =
    Σ nats / Σ tokens over resampled evaluation windows. Every numerator is resampled with the same indices
    (paired), and a call with the same (n, resamples, seed) draws the same indices as the other helpers.
    """
    den = np.asarray(denominator, dtype=np.float64)
    n = den.size
    if n == 0 or resamples <= 0:
        return {}
    idx = resample_indices(n, resamples, seed)
    den_sums = den[idx].sum(axis=1)
    out = {}
    for k, v in numerators.items():
        num = np.asarray(v, dtype=np.float64)
        if num.size != n:
            raise ValueError(f"{k}: {num.size} items, the denominator has {n}")
        with np.errstate(divide="ignore", invalid="ignore"):
            out[k] = percentile_interval(scale * num[idx].sum(axis=1) / den_sums, level)
    return out


def corpus_interval(metric, predictions: Sequence[str], streams: Sequence[Sequence[str]], *,
                    resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> list[float]:
    """Interval of a sacrebleu corpus metric (BLEU, chrF): resampled sums of its per-sentence statistics.

    `streams` are sacrebleu's reference streams (one list per reference position). Uses sacrebleu's
    statistics hooks (`_extract_corpus_statistics`, `_compute_score_from_stats`), the ones its bootstrap uses.
    """
    stats = np.asarray(metric._extract_corpus_statistics(list(predictions), [list(r) for r in streams]),
                       dtype=np.float64)
    idx = resample_indices(len(stats), resamples, seed)
    sums = stats[idx].sum(axis=1)  # [resamples, n_stats]
    scores = [metric._compute_score_from_stats(row.tolist()).score for row in sums]
    return percentile_interval(scores, level)


def classification_intervals(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], *,
                             resamples: int = RESAMPLES, seed: int = 0,
                             level: float = LEVEL) -> dict[str, list[float]]:
    """Intervals of accuracy and macro precision/recall/F1 (macro over the classes present in each resample,
    as `classification_metrics` averages over the classes present in the data)."""
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    t = np.array([index[x] for x in y_true], dtype=np.int64)
    p = np.array([index[x] for x in y_pred], dtype=np.int64)
    n = len(t)
    if n == 0 or resamples <= 0:
        return {}
    idx = resample_indices(n, resamples, seed)
    cells = t[idx] * k + p[idx]  # [resamples, n]: one confusion cell per resampled item
    conf = np.stack([np.bincount(row, minlength=k * k) for row in cells]).reshape(resamples, k, k)
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
    support = conf.sum(axis=2).astype(np.float64)
    predicted = conf.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = support > 0
    n_present = present.sum(axis=1)

    def macro(m: np.ndarray) -> np.ndarray:
        return (m * present).sum(axis=1) / n_present

    return {
        "accuracy": percentile_interval(tp.sum(axis=1) / n, level),
        "macro_precision": percentile_interval(macro(prec), level),
        "macro_recall": percentile_interval(macro(rec), level),
        "macro_f1": percentile_interval(macro(f1), level),
    }


def compare(a: Sequence[float] | None, b: Sequence[float] | None, higher_is_better: bool = True) -> str:
    """"better" / "worse" when interval a lies wholly above / below interval b, else "overlap"."""
    if not a or not b:
        return "overlap"
    if a[0] > b[1]:
        return "better" if higher_is_better else "worse"
    if a[1] < b[0]:
        return "worse" if higher_is_better else "better"
    return "overlap"


def verdicts(systems: list[dict], metric: str, higher_is_better: bool = True) -> list[str]:
    """One sentence per non-baseline system: how it stands against the best baseline on `metric`, by interval."""
    baselines = [s for s in systems if s.get("baseline") and s.get(metric) is not None]
    if not baselines:
        return []
    pick = max if higher_is_better else min
    best = pick(baselines, key=lambda s: s[metric])
    out = []
    for s in systems:
        if s.get("baseline") or s.get(metric) is None:
            continue
        ci_s, ci_b = (s.get("ci") or {}).get(metric), (best.get("ci") or {}).get(metric)
        if not ci_s or not ci_b:
            continue
        word = compare(ci_s, ci_b, higher_is_better)
        title, base = s.get("title", s["name"]), best.get("title", best["name"])
        if word == "overlap":
            out.append(f"{title} and the best baseline ({base}) are not separable on {metric}: "
                       "their 95 % intervals overlap.")
        else:
            out.append(f"{title} is {word} than the best baseline ({base}) on {metric}: the 95 % intervals "
                       "do not overlap.")
    return out
