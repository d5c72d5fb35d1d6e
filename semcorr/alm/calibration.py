"""Scores that mean something, and when to stop: Platt calibration, reliability, early stopping.

A keypoint's raw location score is the heatmap probability mass within the reviewer's
acceptance radius (5% of the box's longer side, as the simulated reviewer uses). Platt
scaling on the validation share turns it into the measured probability that the point lies
within that radius, so a score threshold means a predicted acceptance rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

ACCEPT_RADIUS = 0.05  # share of the box's longer side


@dataclass(frozen=True)
class Calibration:
    """p(hit) = sigmoid(a * logit(raw) + b); the identity (a=1, b=0) when too few points were seen.

    `var_a`, `cov_ab`, `var_b`: the fit's uncertainty (inverse Hessian of the log-likelihood at the
    optimum, a Laplace approximation); zero for a hand-made calibration, which is then taken as exact.
    """

    a: float = 1.0
    b: float = 0.0
    points: int = 0
    radius: float = ACCEPT_RADIUS
    var_a: float = 0.0
    cov_ab: float = 0.0
    var_b: float = 0.0

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(raw) + self.b)))

    def upper(self, raw: np.ndarray, z: float) -> np.ndarray:
        """The calibrated probability's upper confidence bound: `z` standard errors of the fit's
        logit above the estimate (delta method on a, b); equal to the estimate when z = 0 or the
        fit's uncertainty is unknown."""
        x = _logit(raw)
        variance = np.maximum(x ** 2 * self.var_a + 2 * x * self.cov_ab + self.var_b, 0.0)
        return 1.0 / (1.0 + np.exp(-(self.a * x + self.b + z * np.sqrt(variance))))

    def to_dict(self) -> dict[str, float]:
        return {"a": float(self.a), "b": float(self.b), "points": int(self.points), "radius": float(self.radius),
                "var_a": float(self.var_a), "cov_ab": float(self.cov_ab), "var_b": float(self.var_b)}


def _logit(raw: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(raw, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def fit_platt(raw: np.ndarray, hit: np.ndarray, min_points: int = 20, prior_points: float = 0.0) -> Calibration:
    """Fit a, b by maximum likelihood of `hit` (bool) given `raw` scores in (0, 1).

    `prior_points` > 0 makes it a MAP fit with a Gaussian prior centred on the identity (a = 1, b = 0)
    worth that many points: a small validation share stays close to the raw scores, a large one
    overrides them (for raw scores that are already probabilities, such as a visibility head's).
    """
    raw, hit = np.asarray(raw, dtype=np.float64), np.asarray(hit, dtype=np.float64)
    if len(raw) < min_points or hit.min() == hit.max():
        return Calibration(points=len(raw))
    x = _logit(raw)

    def loss(params: np.ndarray) -> float:
        z = params[0] * x + params[1]
        prior = (prior_points / (2 * len(x))) * ((params[0] - 1) ** 2 + params[1] ** 2)
        return float(np.mean(np.logaddexp(0, z) - hit * z) + 1e-4 * params[0] ** 2 + prior)

    result = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
    a, b = float(result.x[0]), float(result.x[1])
    # Laplace approximation: covariance of (a, b) = inverse Hessian of the summed negative log-likelihood
    p = 1.0 / (1.0 + np.exp(-(a * x + b)))
    w = p * (1 - p)
    hessian = np.array([[np.sum(w * x * x) + 2e-4 * len(x) + prior_points, np.sum(w * x)],
                        [np.sum(w * x), np.sum(w) + prior_points]])
    try:
        cov = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.nan)
    if not np.isfinite(cov).all() or cov[0, 0] < 0 or cov[1, 1] < 0:
        cov = np.array([[1e6, 0.0], [0.0, 1e6]])  # degenerate fit: as good as unknown
    return Calibration(a=a, b=b, points=len(raw), var_a=float(cov[0, 0]), cov_ab=float(cov[0, 1]),
                       var_b=float(cov[1, 1]))


def reliability(probability: np.ndarray, hit: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Predicted against actual hit rate in equal-width probability bins (non-empty bins only)."""
    probability, hit = np.asarray(probability, dtype=np.float64), np.asarray(hit, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probability, edges) - 1, 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "count": int((index == b).sum()),
             "predicted": float(probability[index == b].mean()), "actual": float(hit[index == b].mean())}
            for b in range(bins) if (index == b).any()]


def best_epoch(scores: list[float], patience: int, first: int = 0) -> tuple[int, bool]:
    """The epoch (0-based) with the highest validation score so far among epochs >= `first`, and
    whether to stop now.

    Before `first` the latest epoch stands in and nothing stops. Ties keep the later epoch (trained
    longer, at a lower learning rate); stop when `patience` epochs have passed without a score at
    least as good.
    """
    if not scores:
        return -1, False
    if len(scores) <= first:
        return len(scores) - 1, False
    tail = scores[first:]
    best = first + len(tail) - 1 - int(np.argmax(tail[::-1]))
    return best, len(scores) - 1 - best >= patience
