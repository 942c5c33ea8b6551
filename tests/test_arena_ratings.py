"""Arena ratings: our Bradley-Terry fit against a direct logistic-regression fit, and on simulated votes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmchain.arena.ratings import (
    ELO_SCALE,
    Vote,
    design,
    fit_bt,
    fit_logistic,
    leaderboard,
    pair_stats,
    simulate_votes,
    to_elo,
)

STRENGTHS = {"alpha": 0.9, "beta": 0.4, "gamma": 0.0, "delta": -0.6}


def _sklearn_fit(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The same model fitted directly by sklearn: a tie becomes a win and a loss of weight ½ each."""
    from sklearn.linear_model import LogisticRegression

    half = y == 0.5
    xs = np.vstack([x[~half], x[half], x[half]])
    ys = np.concatenate([y[~half], np.ones(half.sum()), np.zeros(half.sum())])
    ws = np.concatenate([np.ones((~half).sum()), np.full(2 * half.sum(), 0.5)])
    lr = LogisticRegression(C=np.inf if l2 == 0 else 1 / l2, fit_intercept=False, tol=1e-12, max_iter=100_000)
    return lr.fit(xs, ys, sample_weight=ws).coef_[0]


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_bt_fit_equals_direct_logistic_regression(l2):
    votes = simulate_votes(STRENGTHS, 800, seed=3, tie_rate=0.2)
    votes += [Vote("alpha", "delta", "both_bad")] * 5
    models = list(STRENGTHS)
    x, y = design(votes, models)
    ours = fit_logistic(x, y, l2=l2)
    ref = _sklearn_fit(x, y, l2)
    # unpenalised, only differences are identified: compare centred strengths
    assert np.max(np.abs((ours - ours.mean()) - (ref - ref.mean()))) < 1e-6
    if l2 > 0:  # the ridge picks one solution: the raw coefficients agree too
        assert np.max(np.abs(ours - ref)) < 1e-6


def test_style_control_fit_equals_direct_logistic_regression():
    rng = np.random.default_rng(0)
    votes = [Vote(v.model_a, v.model_b, v.winner, int(rng.integers(5, 400)), int(rng.integers(5, 400)))
             for v in simulate_votes(STRENGTHS, 600, seed=4)]  # fmt: skip
    x, y = design(votes, list(STRENGTHS), style=True)
    ours, ref = fit_logistic(x, y, l2=0.0), _sklearn_fit(x, y, 0.0)
    assert abs(ours[-1] - ref[-1]) < 1e-6  # the style coefficient
    assert np.max(np.abs((ours[:-1] - ours[:-1].mean()) - (ref[:-1] - ref[:-1].mean()))) < 1e-6


def test_simulated_votes_recover_order_and_intervals_cover_the_truth():
    votes = simulate_votes(STRENGTHS, 4000, seed=11, tie_rate=0.15)
    lb = leaderboard(votes, bootstrap=200, seed=1)
    assert lb.models == sorted(STRENGTHS, key=STRENGTHS.get, reverse=True)
    truth = dict(zip(STRENGTHS, to_elo(np.array(list(STRENGTHS.values()))), strict=True))
    for m, lo, up, r in zip(lb.models, lb.lower, lb.upper, lb.rating, strict=True):
        assert lo < truth[m] < up, (m, lo, truth[m], up)
        assert lo < r < up
        assert up - lo < 60  # 4000 votes pin a rating to within a few dozen points
    assert list(lb.rank_ub) == [1, 2, 3, 4]  # intervals this tight separate every pair
    assert lb.votes.sum() == 2 * len(votes)


def test_ratings_are_on_the_elo_scale():
    # 30 wins of a over b, 10 of b over a: θa − θb = ln 3, i.e. 400·log10(3) ≈ 190.8 Elo points
    votes = [Vote("a", "b", "a")] * 30 + [Vote("a", "b", "b")] * 10
    theta, _ = fit_bt(votes, ["a", "b"], l2=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-9)
    lb = leaderboard(votes, bootstrap=0, l2=0.0)
    assert lb.rating[0] - lb.rating[1] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert lb.rating.mean() == pytest.approx(1000)
    assert ELO_SCALE * math.log(3) == pytest.approx(400 * math.log10(3))


def test_ties_and_both_bad_count_half():
    votes = [Vote("a", "b", "a")] * 10 + [Vote("a", "b", "tie")] * 10 + [Vote("b", "a", "both_bad")] * 10
    # a: 10 + 5 + 5 = 20 of 30 → odds 2
    theta, _ = fit_bt(votes, ["a", "b"], l2=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(2), abs=1e-9)


def test_win_rate_matrix_and_pair_counts():
    votes = [Vote("a", "b", "a"), Vote("b", "a", "b"), Vote("a", "b", "tie"), Vote("c", "a", "a"), Vote("b", "c", "b")]
    rate, n = pair_stats(votes, ["a", "b", "c"])
    assert n.tolist() == [[0, 3, 1], [3, 0, 1], [1, 1, 0]]
    assert rate[0, 1] == pytest.approx(2.5 / 3) and rate[1, 0] == pytest.approx(0.5 / 3)
    assert rate[2, 0] == 1.0 and rate[0, 2] == 0.0 and rate[2, 1] == 1.0 and rate[1, 2] == 0.0
    assert math.isnan(rate[0, 0])


def test_a_model_that_always_wins_needs_the_prior():
    votes = [Vote("a", "b", "a")] * 20 + [Vote("b", "c", "b"), Vote("c", "b", "b"), Vote("b", "c", "tie")]
    with pytest.raises(ValueError, match="does not exist"):
        fit_bt(votes, ["a", "b", "c"], l2=0.0)
    lb = leaderboard(votes, bootstrap=20)  # the default prior keeps it finite, bootstraps included
    assert lb.models[0] == "a" and np.all(np.isfinite(lb.lower)) and np.all(np.isfinite(lb.upper))


def test_style_control_removes_a_length_bias():
    """Three equally good models; 'verbose' writes longer answers and voters prefer longer ones.
    Without style control it looks best; with it, its edge goes and the length coefficient is positive."""
    rng = np.random.default_rng(5)
    lengths = {"verbose": 600, "plain": 200, "terse": 150}
    names = list(lengths)
    votes = []
    for _ in range(3000):
        a, b = rng.choice(3, 2, replace=False)
        la = int(lengths[names[a]] * rng.uniform(0.5, 1.5))
        lb_ = int(lengths[names[b]] * rng.uniform(0.5, 1.5))
        p = 1 / (1 + math.exp(-3 * (la - lb_) / (la + lb_)))  # preference from length only
        votes.append(Vote(names[a], names[b], "a" if rng.random() < p else "b", la, lb_))
    plain = leaderboard(votes, bootstrap=0)
    styled = leaderboard(votes, bootstrap=100, style=True)
    gap = dict(zip(plain.models, plain.rating, strict=True))
    assert plain.models[0] == "verbose" and gap["verbose"] - gap["terse"] > 100
    assert styled.style_coef > 0.5
    for lo, up in zip(styled.lower, styled.upper, strict=True):
        assert lo < 1000 < up  # every model's interval holds the common (true) rating
