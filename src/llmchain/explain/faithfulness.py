"""Faithfulness of token attributions over a labelled set: ERASER's comprehensiveness and sufficiency
(AOPC over 1/5/10/20/50 % of the tokens) of IG, occlusion and random scores, per text and averaged."""

from __future__ import annotations

import random
import time
from typing import Any

from llmchain.explain.classify import explain_text


def measure_faithfulness(clf, texts: list[str], *, methods: tuple[str, ...] = ("ig", "occlusion"), n_steps: int = 50,
                         seed: int = 0, limit: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Explain each text (for the predicted label) by every method and measure it; a seeded random
    sample of `limit` texts when given. Returns the means per method, the fraction of texts where IG
    beats random on each measure, IG's median convergence delta and the seconds it took."""
    rng = random.Random(seed)
    if limit is not None and limit < len(texts):
        texts = rng.sample(list(texts), limit)
    t0 = time.perf_counter()
    per: list[dict[str, dict[str, float]]] = []
    deltas, rel = [], []
    for i, text in enumerate(texts):
        ex = explain_text(clf, text, methods=methods, n_steps=n_steps, measure=True, seed=seed + i)
        per.append(ex.faithfulness)
        if ex.ig_delta is not None:
            deltas.append(ex.ig_delta)
            rel.append(ex.ig_delta / max(abs(ex.ig_total or 0.0), 1e-6))
    names = list(per[0]) if per else []
    mean = {m: {k: sum(p[m][k] for p in per) / len(per) for k in ("comprehensiveness", "sufficiency")}
            for m in names}  # fmt: skip
    out: dict[str, Any] = {"texts": len(per), "mean": mean, "seconds": round(time.perf_counter() - t0, 1)}
    if "ig" in names:
        out["ig_beats_random"] = {
            "comprehensiveness": sum(p["ig"]["comprehensiveness"] > p["random"]["comprehensiveness"] for p in per) / len(per),
            "sufficiency": sum(p["ig"]["sufficiency"] < p["random"]["sufficiency"] for p in per) / len(per),
        }  # fmt: skip
        deltas.sort()
        rel.sort()
        out["ig_delta_median"] = deltas[len(deltas) // 2]
        out["ig_delta_relative_median"] = rel[len(rel) // 2]
    return out
