"""Decision rules against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from raymlc.decision_rules import adaptive, fit_per_class, fit_prior_shift, fixed, per_class, prior_shift


def f1(targets: np.ndarray, present: np.ndarray) -> float:
    tp = float((targets & present).sum())
    denominator = targets.sum() + present.sum()
    return 2 * tp / denominator if denominator else 0.0


@pytest.fixture
def validation() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    targets = rng.random((60, 5)) < [0.1, 0.3, 0.5, 0.05, 0.0]
    logits = (rng.normal(size=(60, 5)) + 1.5 * targets).round(1)  # rounded: plenty of ties
    return logits, targets


def test_fixed_is_probability_one_half() -> None:
    logits = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(fixed(logits), [[False, False, True]])
    np.testing.assert_array_equal(fixed(logits), expit(logits) > 0.5)


def test_per_class_thresholds_maximize_validation_f1(validation) -> None:
    logits, targets = validation
    thresholds = fit_per_class(logits, targets)
    present = per_class(logits, thresholds)
    for c in range(4):
        values = np.unique(logits[:, c])
        candidates = np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
        best = max(f1(targets[:, c], logits[:, c] > t) for t in candidates)
        assert f1(targets[:, c], present[:, c]) == pytest.approx(best)
        # among equally good thresholds, the highest
        assert thresholds[c] == pytest.approx(
            max(t for t in candidates if f1(targets[:, c], logits[:, c] > t) == pytest.approx(best))
        )
    assert thresholds[4] == 0.0  # no validation positive: the fixed rule


def test_prior_shift_matches_root_finding(validation) -> None:
    logits, targets = validation
    offsets = fit_prior_shift(logits, targets)
    for c in range(4):
        rate = targets[:, c].mean()
        reference = brentq(lambda d, c=c, rate=rate: expit(logits[:, c] + d).mean() - rate, -50, 50, xtol=1e-12)
        assert offsets[c] == pytest.approx(reference, abs=1e-8)
    np.testing.assert_array_equal(prior_shift(logits, offsets), logits + offsets > 0)
    assert not prior_shift(logits, offsets)[:, 4].any()  # rate 0: never predicted


def test_adaptive_compares_entrywise_and_checks_shapes() -> None:
    logits = np.array([[1.0, 2.0], [3.0, -1.0]])
    theta = np.array([[0.5, 2.5], [3.5, -2.0]])
    np.testing.assert_array_equal(adaptive(logits, theta), [[True, False], [False, True]])
    with pytest.raises(ValueError, match="theta shape"):
        adaptive(logits, theta[:1])
    with pytest.raises(ValueError, match="per-class thresholds"):
        per_class(logits, np.zeros(3))
