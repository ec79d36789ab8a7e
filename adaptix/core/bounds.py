"""Confidence bounds and p-values for certified early exiting (``PCEE.md``: Guarantees).

Vectorised over numpy arrays (one entry per threshold or per bin). Every p-value here is valid:
under its null hypothesis, P(p ≤ α) ≤ α.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def binomial_pvalue_at_least(successes: Any, trials: Any, rate: float) -> np.ndarray:
    """P(Bin(trials, rate) ≥ successes): a valid p-value for "the success rate is < rate".

    1 where ``trials`` is 0 (no evidence).
    """
    k = np.asarray(successes, dtype=np.int64)
    m = np.asarray(trials, dtype=np.int64)
    p = stats.binom.sf(k - 1, m, rate)
    return np.where(m > 0, p, 1.0)


def binomial_pvalue_at_most(events: Any, trials: Any, rate: float) -> np.ndarray:
    """P(Bin(trials, rate) ≤ events): a valid p-value for "the event rate is > rate"."""
    k = np.asarray(events, dtype=np.int64)
    m = np.asarray(trials, dtype=np.int64)
    return np.asarray(stats.binom.cdf(k, m, rate), dtype=np.float64)


def hoeffding_bentkus_pvalue(mean: Any, n: int, level: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value for "E[L] ≥ level", L ∈ [0, 1], from its empirical mean.

    min(exp(−n·kl(min(mean, level) ‖ level)), e · P(Bin(n, level) ≤ ⌈n · mean⌉)), as in
    Learn-then-Test (Angelopoulos et al., 2021; Bates et al., 2021).
    """
    r = np.asarray(mean, dtype=np.float64)
    a = np.minimum(r, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(a > 0, a * np.log(a / level), 0.0) + np.where(
            a < 1, (1 - a) * np.log((1 - a) / (1 - level)), 0.0
        )
    hoeffding = np.exp(-n * kl)
    bentkus = math.e * stats.binom.cdf(np.ceil(n * r - 1e-9), n, level)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def clopper_pearson_lower(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound of a success rate; NaN where trials is 0.

    The α-quantile of Beta(k, n − k + 1), 0 when k = 0: P(rate ≥ bound) ≥ 1 − α for every
    true rate.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = stats.beta.ppf(alpha, k, n - k + 1)
    lower = np.where(k <= 0, 0.0, lower)
    return np.where(n >= 1, lower, np.nan)


def clopper_pearson_upper(events: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound of a rate; NaN where trials is 0."""
    k = np.asarray(events, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    return np.where(n >= 1, 1.0 - clopper_pearson_lower(n - k, n, alpha), np.nan)


def fixed_sequence(pvalues: np.ndarray, alpha: float, start: int = 0) -> int:
    """How many hypotheses, in order from ``start``, are rejected before the first p > α."""
    passed = np.asarray(pvalues[start:]) <= alpha
    return int(passed.size if passed.all() else np.argmin(passed))


__all__ = [
    "binomial_pvalue_at_least",
    "binomial_pvalue_at_most",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "fixed_sequence",
    "hoeffding_bentkus_pvalue",
]
