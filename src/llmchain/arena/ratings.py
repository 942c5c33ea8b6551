"""Arena ratings: a Bradley-Terry fit of the votes, bootstrap intervals, win rates, style control.

The model (as lmarena's arena-rank and FastChat's elo_analysis): model i has strength θ_i and
P(i beats j) = σ(θ_i − θ_j). A tie or a "both bad" vote counts half a win for each side, which is the
same as a row with outcome 0.5 in the log-likelihood. We fit it as a logistic regression on the ±1
design matrix (row: +1 in the column of the model on side A, −1 in side B's) by Newton's method,
and report ratings on the Elo scale, 1000 + 400/ln(10)·θ with θ centred (mean 0).

Style control (lmarena's): extra columns holding a per-vote style feature, here the normalised
length difference (len_a − len_b)/(len_a + len_b), standardised. The model coefficients are then
strengths "at equal length" and the style coefficient says how much longer answers are preferred.

The MLE does not exist when a model won (or lost) every battle it was in, or when the comparison
graph falls apart into pieces; `l2` (a Gaussian prior, the ridge of sklearn's LogisticRegression
with C = 1/l2) keeps such fits finite, bootstrap refits included. The default moved no rating by
more than 1.4e-5 points on 20,000 simulated votes (benchmarks/arena_ratings.py); with a handful of
votes and a model that won them all, it still leaves that model far out, as the data say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0
OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
DEFAULT_L2 = 1e-4


@dataclass
class Vote:
    """One judged battle: the two model ids, the winner ('a', 'b', 'tie', 'both_bad'), answer lengths."""

    model_a: str
    model_b: str
    winner: str
    len_a: int = 0
    len_b: int = 0


@dataclass
class Leaderboard:
    """Ratings on the Elo scale with bootstrap intervals, in rating order; plus pair statistics."""

    models: list[str]  # in rating order, best first
    rating: np.ndarray
    lower: np.ndarray  # 2.5 % bootstrap quantile (equal to rating when there is no bootstrap)
    upper: np.ndarray
    votes: np.ndarray  # battles per model
    rank_ub: np.ndarray  # 1 + number of models whose lower bound is above this one's upper bound
    win_rate: np.ndarray  # [i, j]: fraction of i-vs-j battles that i won (ties half); nan if none
    pair_votes: np.ndarray  # [i, j]: battles between i and j
    style_coef: float | None = None  # the length feature's coefficient (logit per standard deviation)
    bootstrap: int = 0
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"model": m, "rating": round(float(r), 2), "lower": round(float(lo), 2),
                 "upper": round(float(up), 2), "votes": int(n), "rank_ub": int(k)}
                for m, r, lo, up, n, k in zip(self.models, self.rating, self.lower, self.upper, self.votes,
                                              self.rank_ub, strict=True)]  # fmt: skip


def design(votes: list[Vote], models: list[str], style: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ±1 design matrix (plus the standardised length column when `style`) and the outcomes."""
    index = {m: i for i, m in enumerate(models)}
    x = np.zeros((len(votes), len(models) + (1 if style else 0)))
    rows = np.arange(len(votes))
    x[rows, [index[v.model_a] for v in votes]] = 1.0
    x[rows, [index[v.model_b] for v in votes]] = -1.0
    if style:
        la = np.array([v.len_a for v in votes], dtype=float)
        lb = np.array([v.len_b for v in votes], dtype=float)
        diff = np.where(la + lb > 0, (la - lb) / np.maximum(la + lb, 1), 0.0)
        sd = diff.std()
        x[:, -1] = (diff - diff.mean()) / sd if sd > 0 else 0.0
    y = np.array([OUTCOME[v.winner] for v in votes])
    return x, y


def _loss(x, y, w, params, l2):
    z = x @ params
    # −log σ(z) = logaddexp(0, −z): stable for large |z|
    ll = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    return float(w @ ll + 0.5 * l2 * params @ params)


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, l2: float = DEFAULT_L2,
                 tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:  # fmt: skip
    """Minimise Σ w·logloss(y, σ(x·p)) + ½·l2·|p|² by Newton's method with step halving.

    With l2 = 0 the ±1 design is rank-deficient (adding a constant to every strength changes
    nothing); the minimum-norm Newton step from 0 keeps the strengths centred. Raises ValueError
    when the maximum does not exist (the parameters run off to infinity)."""
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
    p = np.zeros(x.shape[1])
    loss = _loss(x, y, w, p, l2)
    for _ in range(max_iter):
        s = 1 / (1 + np.exp(-(x @ p)))
        grad = x.T @ (w * (s - y)) + l2 * p
        hess = (x.T * (w * s * (1 - s))) @ x + l2 * np.eye(len(p))
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while True:
            new = p - t * step
            new_loss = _loss(x, y, w, new, l2)
            if new_loss <= loss + 1e-15 * abs(loss) or t < 1e-10:
                break
            t /= 2
        p, loss = new, new_loss
        if np.max(np.abs(t * step)) < tol:
            break
        if np.max(np.abs(p)) > 40:
            break
    # A finite maximum this far out would need odds of e^20 = 5e8 to one in the votes; what gets here
    # is a model that won (or lost) everything, whose strength Newton pushes out until σ saturates.
    if np.max(np.abs(p)) > 20:
        raise ValueError("the Bradley-Terry maximum does not exist: a model won or lost every battle "
                         "it was in (or the models fall into groups never compared); use l2 > 0")
    return p


def fit_bt(votes: list[Vote], models: list[str], l2: float = DEFAULT_L2,
           style: bool = False) -> tuple[np.ndarray, float | None]:  # fmt: skip
    """Strengths θ (natural-log scale, centred) of `models` from `votes`, and the style coefficient."""
    x, y = design(votes, models, style)
    p = fit_logistic(x, y, l2=l2)
    theta = p[: len(models)]
    return theta - theta.mean(), (float(p[-1]) if style else None)


def to_elo(theta: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * (theta - theta.mean())


def pair_stats(votes: list[Vote], models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Win-rate matrix (ties half; nan where a pair never met) and battle counts per pair."""
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins, n = np.zeros((k, k)), np.zeros((k, k))
    for v in votes:
        a, b, o = index[v.model_a], index[v.model_b], OUTCOME[v.winner]
        wins[a, b] += o
        wins[b, a] += 1 - o
        n[a, b] += 1
        n[b, a] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, wins / n, np.nan)
    return rate, n.astype(int)


def leaderboard(votes: list[Vote], models: list[str] | None = None, *, bootstrap: int = 200, l2: float = DEFAULT_L2,
                style: bool = False, seed: int = 0) -> Leaderboard:  # fmt: skip
    """Fit the votes and bootstrap over them (`bootstrap` resamples of the votes, with replacement).

    ValueError when there are no votes or fewer than two models."""
    if not votes:
        raise ValueError("no votes yet")
    models = sorted({v.model_a for v in votes} | {v.model_b for v in votes}) if models is None else list(models)
    if len(models) < 2:
        raise ValueError("need votes between at least two models")
    x, y = design(votes, models, style)
    # identical rows (same pair, sides and outcome) become one weighted row: without style control
    # a fit sees at most 3·k·(k−1) rows however many votes there are
    rows, inverse = np.unique(np.column_stack([x, y]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    ux, uy = rows[:, :-1], rows[:, -1]
    p = fit_logistic(ux, uy, np.bincount(inverse, minlength=len(rows)).astype(float), l2=l2)
    rating = to_elo(p[: len(models)])
    coef = float(p[-1]) if style else None
    lower, upper = rating.copy(), rating.copy()
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, len(models)))
        for b in range(bootstrap):
            # a resample of the votes (with replacement) is a vector of counts per distinct row
            w = np.bincount(inverse[rng.integers(0, len(votes), len(votes))], minlength=len(rows)).astype(float)
            samples[b] = to_elo(fit_logistic(ux, uy, w, l2=l2)[: len(models)])
        lower, upper = np.quantile(samples, 0.025, axis=0), np.quantile(samples, 0.975, axis=0)
    order = np.argsort(-rating, kind="stable")
    rate, n = pair_stats(votes, models)
    per_model = n.sum(axis=1)
    rank_ub = np.array([1 + int(np.sum(lower > upper[i])) for i in range(len(models))])
    return Leaderboard(models=[models[i] for i in order], rating=rating[order], lower=lower[order],
                       upper=upper[order], votes=per_model[order], rank_ub=rank_ub[order],
                       win_rate=rate[np.ix_(order, order)], pair_votes=n[np.ix_(order, order)],
                       style_coef=coef, bootstrap=bootstrap)  # fmt: skip


def simulate_votes(strengths: dict[str, float], n: int, seed: int = 0, tie_rate: float = 0.1) -> list[Vote]:
    """Votes drawn from a Bradley-Terry model with known strengths θ (natural-log scale): uniform random
    pairs, a tie with probability `tie_rate`, else a win for A with the probability q that keeps the
    expected outcome at σ(θ_a − θ_b) (so ties, counted half, leave the strengths where they are)."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        pa = 1 / (1 + math.exp(-(strengths[names[a]] - strengths[names[b]])))
        tie = min(tie_rate, 2 * pa, 2 * (1 - pa))  # a tie rate the expected outcome allows
        q = (pa - tie / 2) / (1 - tie)
        if rng.random() < tie:
            winner = "tie"
        else:
            winner = "a" if rng.random() < q else "b"
        out.append(Vote(names[a], names[b], winner))
    return out
