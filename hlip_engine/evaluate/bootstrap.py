"""95 % bootstrap confidence intervals: cases resampled with replacement (seeded), every metric recomputed."""
from __future__ import annotations

import warnings

import numpy as np

from .metric_sets import compute, flatten


def bootstrap_ci(protocol, targets, scores, ids, preds=None, *, rounds: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """{flattened metric name: [low, high]} from ``rounds`` resamples; NaN where a metric is undefined in
    too many resamples to say (more than half of them)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    samples: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(rounds):
            pick = rng.integers(0, n, n)
            result = compute(protocol, targets[pick], scores[pick], [ids[i] for i in pick],
                             None if preds is None else preds[pick])
            for key, value in flatten(result).items():
                samples.setdefault(key, []).append(value)
    low, high = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for key, values in samples.items():
        v = np.asarray(values, dtype=float)
        finite = v[~np.isnan(v)]
        out[key] = ([float(np.percentile(finite, low)), float(np.percentile(finite, high))]
                    if len(finite) * 2 > len(v) else [float("nan"), float("nan")])
    return out
