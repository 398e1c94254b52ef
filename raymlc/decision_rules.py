"""Decision rules: which tags are present, from clip-level logits [N, C].

Every rule returns a boolean [N, C] decision; the ones with parameters have a `fit_*` function that
estimates them on a labelled (validation) split:

* `fixed`: z > t (t = 0 is probability 0.5; also how a sigmoidF1-trained model is used);
* `per_class`: z > t_c with t_c from `fit_per_class` (F1-optimal on validation);
* `prior_shift`: z + δ_c > 0 with δ_c from `fit_prior_shift` (mean predicted probability = label rate);
* `adaptive`: z > θ(x) per clip and label (`raymlc.thresholds`: IDF only, KNN only, or fused).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

PRIOR_SHIFT_BOUND = 60.0
"""Offsets are searched in [−(max |z| + bound), max |z| + bound]; a class with rate 0 (1) gets the low (high)
end, i.e. it is never (always) predicted."""
PRIOR_SHIFT_STEPS = 100


def _logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be a 2-D array [N, C], got shape {logits.shape}")
    return logits


def _pair(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = _logits(logits), np.asarray(targets)
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {targets.shape} != logits shape {logits.shape}")
    return logits, targets > 0


def fixed(logits: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """z > threshold for every label (the default 0.0 is probability 0.5)."""
    return _logits(logits) > threshold


def fit_per_class(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class logit thresholds [C] maximizing F1 on (validation) logits and labels.

    Candidates are the cuts between consecutive distinct logits (threshold at the midpoint; below the smallest
    logit to predict all); among equal F1s the highest threshold wins. A class with no positive gets 0.0,
    the fixed rule: the data say nothing about it.
    """
    logits, targets = _pair(logits, targets)
    n = len(logits)
    order = np.argsort(-logits, axis=0, kind="stable")
    ranked = np.take_along_axis(logits, order, axis=0)
    true_positives = np.cumsum(np.take_along_axis(targets, order, axis=0), axis=0)
    positives = targets.sum(axis=0)
    predicted = np.arange(1, n + 1)[:, None]
    f1 = 2 * true_positives / (predicted + positives)
    cut_allowed = np.ones_like(ranked, dtype=bool)
    cut_allowed[:-1] = ranked[:-1] != ranked[1:]  # cutting inside a tie group is not a threshold
    best = np.argmax(np.where(cut_allowed, f1, -1.0), axis=0)
    columns = np.arange(logits.shape[1])
    below = np.where(best + 1 < n, ranked[np.minimum(best + 1, n - 1), columns], ranked[best, columns] - 2.0)
    thresholds = (ranked[best, columns] + below) / 2
    return np.where(positives > 0, thresholds, 0.0)


def per_class(logits: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """z_c > t_c with one threshold per class ([C], e.g. from `fit_per_class`)."""
    logits, thresholds = _logits(logits), np.asarray(thresholds)
    if thresholds.shape != (logits.shape[1],):
        raise ValueError(f"expected {logits.shape[1]} per-class thresholds, got shape {thresholds.shape}")
    return logits > thresholds


def fit_prior_shift(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class logit offsets δ [C] with mean_i sigmoid(z_ic + δ_c) = label rate of class c (bisection).

    A prior-shift recalibration: when training labels miss positives, the model's probabilities are too
    low on average; shifting each class's logits so the mean predicted probability matches the rate observed
    on validation restores calibration-in-the-large before the 0.5 cut.
    """
    logits, targets = _pair(logits, targets)
    rate = targets.mean(axis=0)
    bound = np.abs(logits).max(initial=0.0) + PRIOR_SHIFT_BOUND
    low, high = np.full(logits.shape[1], -bound), np.full(logits.shape[1], bound)
    for _ in range(PRIOR_SHIFT_STEPS):
        middle = (low + high) / 2
        too_high = expit(logits + middle).mean(axis=0) > rate
        high, low = np.where(too_high, middle, high), np.where(too_high, low, middle)
    return (low + high) / 2


def prior_shift(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """z_c + δ_c > 0 (offsets [C] from `fit_prior_shift`)."""
    return per_class(logits, -np.asarray(offsets))


def adaptive(logits: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """z > θ entrywise, θ [N, C] from `raymlc.thresholds.thresholds_for` (or a bundle's `Tagger`)."""
    logits, theta = _logits(logits), np.asarray(theta)
    if theta.shape != logits.shape:
        raise ValueError(f"theta shape {theta.shape} != logits shape {logits.shape}")
    return logits > theta
