"""Benchmark: the arena's Bradley-Terry fit against sklearn, the prior's effect, bootstrap coverage, speed.

    flock /tmp/llmchain-bench.lock .venv/bin/python benchmarks/arena_ratings.py [--datasets 40]

On votes simulated from known strengths (6 models, θ from −1 to 1, 15 % ties kept at the
Bradley-Terry expected outcome):
- agreement: largest |Δ centred θ| between our Newton fit and sklearn's LogisticRegression (lbfgs,
  no penalty, tol 1e-12) on the same votes, and seconds per fit of each;
- prior: largest rating change (Elo points) the default l2 = 1e-4 makes against the plain MLE;
- coverage: over `--datasets` independent simulated arenas of `--votes` votes, the fraction of
  (model, arena) cases whose 95 % bootstrap interval holds the true rating (nominal 0.95), the
  fraction of arenas ranked exactly right, and seconds per 1000-resample bootstrap.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmchain.arena.ratings import design, fit_logistic, leaderboard, simulate_votes, to_elo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=40)
    ap.add_argument("--votes", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    strengths = {f"m{i}": float(t) for i, t in enumerate(np.linspace(-1, 1, 6))}
    models = list(strengths)
    truth = dict(zip(models, to_elo(np.array(list(strengths.values()))), strict=True))

    votes = simulate_votes(strengths, 20_000, seed=0, tie_rate=0.15)
    x, y = design(votes, models)
    t = time.perf_counter()
    ours = fit_logistic(x, y, l2=0.0)
    t_ours = time.perf_counter() - t
    from sklearn.linear_model import LogisticRegression

    half = y == 0.5
    xs = np.vstack([x[~half], x[half], x[half]])
    ys = np.concatenate([y[~half], np.ones(half.sum()), np.zeros(half.sum())])
    ws = np.concatenate([np.ones((~half).sum()), np.full(2 * half.sum(), 0.5)])
    t = time.perf_counter()
    ref = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(xs, ys, sample_weight=ws)
    t_ref = time.perf_counter() - t
    ref = ref.coef_[0]
    diff = np.max(np.abs((ours - ours.mean()) - (ref - ref.mean())))
    prior = np.max(np.abs(leaderboard(votes, models, bootstrap=0, l2=0.0).rating
                          - leaderboard(votes, models, bootstrap=0).rating))  # fmt: skip
    print(f"20000 votes, 6 models: |Δθ| ours vs sklearn = {diff:.2e}; fit {t_ours:.3f} s (ours, per-vote rows) "
          f"vs {t_ref:.3f} s (sklearn); default prior moves ratings by ≤ {prior:.2e} Elo")

    covered, cases, exact, boot_s = 0, 0, 0, []
    for d in range(args.datasets):
        votes = simulate_votes(strengths, args.votes, seed=100 + d, tie_rate=0.15)
        t = time.perf_counter()
        lb = leaderboard(votes, models, bootstrap=args.bootstrap, seed=d)
        boot_s.append(time.perf_counter() - t)
        for m, lo, up in zip(lb.models, lb.lower, lb.upper, strict=True):
            covered += lo <= truth[m] <= up
            cases += 1
        exact += lb.models == sorted(models, key=strengths.get, reverse=True)
    print(f"{args.datasets} arenas × {args.votes} votes, {args.bootstrap} resamples: 95 % intervals cover the "
          f"true rating in {covered}/{cases} = {covered / cases:.3f} of cases; order exactly right in "
          f"{exact}/{args.datasets}; {np.median(boot_s):.2f} s per leaderboard (median)")


if __name__ == "__main__":
    main()
