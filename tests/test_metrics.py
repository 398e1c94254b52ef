"""Metrics against scikit-learn / SciPy as independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    label_ranking_average_precision_score,
    roc_auc_score,
)

from raymlc import metrics

CASES = [
    (seed, shape, decimals) for seed in range(4) for shape in [(40, 6), (7, 12), (200, 3)] for decimals in [None, 1]
]


def _random_case(seed: int, shape: tuple[int, int], decimals: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sparse random labels with an all-negative class, an all-positive class and all-negative rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) < 0.3).astype(int)
    y[:, 0] = 0
    y[:, -1] = 1
    y[: max(1, shape[0] // 5)] = 0
    scores = rng.random(shape) + 0.5 * y
    if decimals is not None:  # coarse rounding creates many ties
        scores = np.round(scores, decimals)
    return y, scores


@pytest.mark.parametrize(("seed", "shape", "decimals"), CASES)
def test_metrics_match_sklearn(seed: int, shape: tuple[int, int], decimals: int | None) -> None:
    y, scores = _random_case(seed, shape, decimals)
    has_pos = y.sum(0) > 0
    ap = metrics.average_precision_per_class(y, scores)
    assert np.isnan(ap[~has_pos]).all()
    ref_ap = average_precision_score(y[:, has_pos], scores[:, has_pos], average=None)
    np.testing.assert_allclose(ap[has_pos], ref_ap, rtol=0, atol=1e-9)
    ref_map = average_precision_score(y[:, has_pos], scores[:, has_pos], average="macro")
    assert metrics.mean_average_precision(y, scores) == pytest.approx(ref_map, abs=1e-9)

    both = has_pos & (y.sum(0) < y.shape[0])
    auc = metrics.roc_auc_per_class(y, scores)
    assert np.isnan(auc[~both]).all()
    ref_auc = np.array([roc_auc_score(y[:, c], scores[:, c]) for c in np.flatnonzero(both)])
    np.testing.assert_allclose(auc[both], ref_auc, rtol=0, atol=1e-9)
    ref_dprime = np.mean(math.sqrt(2) * norm.ppf(np.clip(ref_auc, metrics.AUC_EPS, 1 - metrics.AUC_EPS)))
    assert metrics.d_prime(y, scores) == pytest.approx(ref_dprime, abs=1e-9)

    rows = y.sum(1) > 0
    ref_lwlrap = label_ranking_average_precision_score(y[rows], scores[rows], sample_weight=y[rows].sum(1))
    assert metrics.lwlrap(y, scores) == pytest.approx(ref_lwlrap, abs=1e-9)

    pred = scores > 0.7
    defined = np.flatnonzero((y == 1).any(0) | pred.any(0))
    micro, macro = metrics.f1_scores(y, pred)
    assert micro == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-9)
    assert macro == pytest.approx(f1_score(y, pred, average="macro", labels=defined), abs=1e-9)


def test_lwlrap_hand_computed() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.3, 0.3, 0.2], [0.1, 0.2, 0.3]])
    # Row 0: label 0 ranked 1st (precision 1/1); label 2 ranked 3rd with 2 positives at or above (2/3).
    # Row 1: label 1 ties label 0, so its rank is 2 with 1 positive at or above (1/2). Row 2 has no positives.
    expected = (1 + 2 / 3 + 1 / 2) / 3
    assert metrics.lwlrap(y, scores) == pytest.approx(expected, abs=1e-12)


def test_ap_ties_share_threshold() -> None:
    y = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.8], [0.8], [0.5], [0.1]])
    # Thresholds 0.8 (P=1/2, R=1/2) and 0.5 (P=2/3, R=1): AP = 1/2·1/2 + 1/2·2/3.
    assert metrics.average_precision_per_class(y, scores)[0] == pytest.approx(0.25 + 1 / 3, abs=1e-12)


def test_d_prime_perfect_class_is_finite() -> None:
    y = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.1, 0.2], [0.2, 0.8]])
    auc = metrics.roc_auc_per_class(y, scores)
    np.testing.assert_allclose(auc, [1.0, 0.0])
    value = metrics.d_prime(y, scores)
    assert math.isfinite(value)
    assert value == pytest.approx(0.0, abs=1e-9)  # +d and -d of the clipped extremes cancel


def test_degenerate_inputs() -> None:
    y = np.zeros((3, 2), dtype=int)
    scores = np.full((3, 2), 0.2)
    assert math.isnan(metrics.mean_average_precision(y, scores))
    assert math.isnan(metrics.d_prime(y, scores))
    assert math.isnan(metrics.lwlrap(y, scores))
    assert metrics.f1_scores(y, scores > 0.5) == (0.0, 0.0)


def test_summarize_keys_and_threshold() -> None:
    y, scores = _random_case(0, (30, 4), None)
    scores = scores / scores.max()
    out = metrics.summarize(y, scores, threshold=0.6)
    assert set(out) == {"map", "d_prime", "lwlrap", "micro_f1", "macro_f1"}
    assert all(isinstance(v, float) for v in out.values())
    assert (out["micro_f1"], out["macro_f1"]) == metrics.f1_scores(y, scores > 0.6)
    assert out["map"] == metrics.mean_average_precision(y, scores)


def test_flag_precision_recall() -> None:
    flagged = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    removed = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    assert metrics.flag_precision_recall(flagged, removed) == {
        "count": 3,
        "precision": 2 / 3,
        "recall": 2 / 3,
    }
    none_flagged = metrics.flag_precision_recall(np.zeros((2, 3)), removed)
    assert none_flagged == {"count": 0, "precision": None, "recall": 0.0}
    assert metrics.flag_precision_recall(flagged, np.zeros((2, 3)))["recall"] is None
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.flag_precision_recall(flagged, removed[:1])


def test_flag_quality_of_blocks_adds_up_to_the_whole_split() -> None:
    rng = np.random.default_rng(3)
    flagged, removed = rng.random((50, 4)) < 0.2, rng.random((50, 4)) < 0.3
    blocks = sum(metrics.flag_counts(flagged[lo : lo + 7], removed[lo : lo + 7]) for lo in range(0, 50, 7))
    summary, per_class = metrics.flag_quality(blocks)
    assert summary == metrics.flag_precision_recall(flagged, removed)
    for c in range(4):  # per class: hits / flagged, by a plain loop
        hits = sum(1 for r in range(50) if flagged[r, c] and removed[r, c])
        assert per_class[c] == pytest.approx(hits / flagged[:, c].sum())
    assert np.isnan(metrics.flag_quality(metrics.flag_counts(np.zeros((2, 2)), np.ones((2, 2))))[1]).all()


@pytest.mark.parametrize(
    ("y", "other"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3))),
        (np.zeros(3), np.zeros(3)),
        (np.full((2, 2), 2), np.zeros((2, 2))),
    ],
)
def test_validation(y: np.ndarray, other: np.ndarray) -> None:
    for fn in (metrics.mean_average_precision, metrics.d_prime, metrics.lwlrap, metrics.f1_scores):
        with pytest.raises(ValueError):
            fn(y, other)


def test_f1_rejects_non_binary_predictions() -> None:
    with pytest.raises(ValueError, match="binary"):
        metrics.f1_scores(np.zeros((2, 2)), np.full((2, 2), 0.3))


def test_recovered_fraction_is_undefined_without_a_gain_to_recover() -> None:
    assert metrics.recovered_fraction(0.75, 0.80, 0.70) == pytest.approx(0.5)
    assert metrics.recovered_fraction(0.65, 0.80, 0.70) == pytest.approx(-0.5)
    # the perfect mask below the teacher: a student also below it is no "recovery" of 2.0
    assert metrics.recovered_fraction(0.68, 0.69, 0.70) is None
    assert metrics.recovered_fraction(0.75, 0.70, 0.70) is None
