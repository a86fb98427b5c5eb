"""BG/NBD, the beta-geometric / negative binomial "buy till you die" model, written from the paper.

Fader, Hardie & Lee, *"Counting Your Customers" the Easy Way: An Alternative to the Pareto/NBD
Model* (Marketing Science 24(2), 2005). Each customer buys at a Poisson rate ``lambda`` while
alive, ``lambda ~ Gamma(r, alpha)`` across customers; after every purchase they drop out for good
with probability ``p``, ``p ~ Beta(a, b)``. A customer's history is summarised by ``x`` (repeat
purchases: purchases after the first), ``t_x`` (time from the first to the last purchase) and
``T`` (time from the first purchase to the end of the calibration period). Time is in days here.

* Likelihood (paper eq. 6)::

      L(r, alpha, a, b | x, t_x, T) = B(a, b + x) / B(a, b) * G(r + x) alpha^r / (G(r) (alpha + T)^(r + x))
          + [x > 0] B(a + 1, b + x - 1) / B(a, b) * G(r + x) alpha^r / (G(r) (alpha + t_x)^(r + x))

  ``fit_bgnbd`` maximises the sum of ``log L`` over customers (scipy L-BFGS-B on log parameters).
* P(alive) (paper appendix, eq. A12 of the accompanying note)::

      P(alive | x, t_x, T) = 1 / (1 + [x > 0] a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))

* Conditional expected purchases in ``(T, T + t]`` (paper eq. 10)::

      E[Y(t) | x, t_x, T] = (a + b + x - 1) / (a - 1)
          * [1 - ((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t))]
          / (1 + [x > 0] a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))

  defined for ``a > 1`` only (NaN otherwise).
* P(no purchase in ``(T, T + t]``): a dead customer buys nothing; an alive one's rate has the
  posterior ``Gamma(r + x, alpha + T)`` (death only follows a purchase), so
  ``1 - P(alive) * (1 - ((alpha + T) / (alpha + T + t))^(r + x))``. This is the churn score.

**When it fails.** The dropout part (``a``, ``b``) is learnt from repeat buyers only: with few of
them (``MIN_REPEAT_BUYERS``) ``fit_bgnbd`` refuses (``ValueError``) and a caller falls back to
recency. With almost no dropout in the data ``a`` runs to 0 or ``b`` to infinity (P(alive) near
1 for everyone, a pure Poisson-gamma model); with ``a <= 1`` the expected purchases diverge
(reported as NaN). The model assumes stationary buying: seasonality, a shop that shrinks, or
counts that are sessions rather than purchases (many events a day) break it; events on one day
count as one purchase (``purchase_summary``). Customers are assumed to start at their first
purchase: a log cut at its start (left-censoring) shows old customers as new ones.

>>> params = BGNBDParams(r=1.0, alpha=1.0, a=1.0, b=1.0)
>>> round(float(p_alive(params, np.array([1.0]), np.array([1.0]), np.array([2.0]))[0]), 6)  # 4/13
0.307692
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

MIN_REPEAT_BUYERS = 10  # fewer customers with a second purchase: the dropout process cannot be learnt


@dataclass(frozen=True)
class BGNBDParams:
    """The four BG/NBD parameters: ``lambda ~ Gamma(r, alpha)`` (alpha in days), ``p ~ Beta(a, b)``."""

    r: float
    alpha: float
    a: float
    b: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def purchase_summary(days: np.ndarray, cutoff: float) -> tuple[float, float, float]:
    """``(x, t_x, T)`` of one customer from their purchase days (day numbers) up to ``cutoff``.

    Days after ``cutoff`` are ignored; several purchases on one day count as one. ``T`` runs to the
    end of the cut-off day (``cutoff + 1 - first``), so a customer who first bought that day has ``T = 1``.
    """
    kept = np.unique(np.asarray(days, dtype=float)[np.asarray(days, dtype=float) <= cutoff])
    if not kept.size:
        raise ValueError(f"no purchase on or before day {cutoff}")
    return float(kept.size - 1), float(kept[-1] - kept[0]), float(cutoff + 1 - kept[0])


def log_likelihood(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-customer ``log L`` (paper eq. 6) for arrays of ``x``, ``t_x`` and ``T``."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    first = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + t)
    repeat = x > 0
    second = np.where(
        repeat,
        betaln(a + 1, np.where(repeat, b + x - 1, b)) - betaln(a, b) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return np.asarray(common + np.logaddexp(first, second))


def fit_bgnbd(
    x: np.ndarray, t_x: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None
) -> tuple[BGNBDParams, float]:
    """Maximum-likelihood ``(params, mean log-likelihood)``; ``ValueError`` with too few repeat buyers.

    Customers with the same ``(x, t_x, T)`` are pooled first (``weights`` counts them), so the cost
    grows with the distinct histories, not with the customers.
    """
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    w = np.ones(x.size) if weights is None else np.asarray(weights, dtype=float)
    repeaters = float(w[x > 0].sum())
    if repeaters < MIN_REPEAT_BUYERS:
        raise ValueError(
            f"BG/NBD needs at least {MIN_REPEAT_BUYERS} customers with a repeat purchase (got {int(repeaters)})"
        )
    rows = np.stack([x, t_x, t], axis=1)
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    pooled = np.bincount(inverse.ravel(), weights=w)
    ux, utx, ut = unique[:, 0], unique[:, 1], unique[:, 2]
    total = pooled.sum()

    def loss(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(np.clip(theta, -20.0, 20.0))
        ll = log_likelihood(BGNBDParams(r, alpha, a, b), ux, utx, ut)
        return float(-(pooled * ll).sum() / total)

    # From the pooled rows, so that customers given one by one or already pooled (``weights``) fit alike.
    start = np.log(
        [
            1.0,
            max(float(np.average(ut, weights=pooled)) / max(float(np.average(ux, weights=pooled)), 0.5), 1.0),
            1.0,
            3.0,
        ]
    )
    result = minimize(loss, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BGNBDParams(r, alpha, a, b), -float(result.fun)


def p_alive(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P(the customer is still alive at ``T``) (1 for customers without a repeat purchase)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    repeat = x > 0
    log_ratio = (r + x) * (np.log(alpha + t) - np.log(alpha + t_x))
    odds = np.where(repeat, a / np.where(repeat, b + x - 1, 1.0) * np.exp(np.minimum(log_ratio, 700.0)), 0.0)
    return np.asarray(1.0 / (1.0 + odds))


def expected_purchases(
    params: BGNBDParams, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Expected purchases in ``(T, T + horizon]`` (paper eq. 10); NaN when ``a <= 1`` (no finite mean)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    if a <= 1.0:
        return np.full(x.shape, np.nan)
    z = horizon / (alpha + t + horizon)
    lead = (a + b + x - 1) / (a - 1)
    decay = ((alpha + t) / (alpha + t + horizon)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
    return np.asarray(lead * (1.0 - decay) * p_alive(params, x, t_x, t))


def p_no_purchase(params: BGNBDParams, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P(no purchase in ``(T, T + horizon]``): dead, or alive with no Poisson arrival (see the module doc)."""
    x, t = np.asarray(x, dtype=float), np.asarray(t, dtype=float)
    alive = p_alive(params, x, t_x, t)
    quiet = ((params.alpha + t) / (params.alpha + t + horizon)) ** (params.r + x)
    return np.asarray(1.0 - alive * (1.0 - quiet))
