"""The machinery the generated datasets share: calibrated removal, systematic sampling, overlaps, negatives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from raymlc.data.synthetic import (
    EXPLICIT_NEGATIVES,
    calibrated_probabilities,
    explicit_negatives,
    overlaps,
    remove_positives,
    removed_labels,
    systematic_sample,
)


@dataclass(frozen=True)
class Labelled:
    label: str


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.8])
def test_calibrated_probabilities_average_the_fraction_and_keep_the_order(fraction):
    scores = np.random.default_rng(0).normal(size=500)
    probabilities = calibrated_probabilities(scores, fraction)
    assert probabilities.mean() == pytest.approx(fraction, abs=1e-6)
    assert np.all(np.diff(probabilities[np.argsort(scores)]) >= 0)
    assert not calibrated_probabilities(scores, 0.0).any()


def test_systematic_sample_takes_floor_or_ceil_of_the_sum_with_the_given_marginals():
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(0, 0.6, 40)
    total = probabilities.sum()
    samples = np.array([systematic_sample(probabilities, rng) for _ in range(4000)])
    assert set(samples.sum(axis=1)) <= {np.floor(total), np.ceil(total)}
    np.testing.assert_allclose(samples.mean(axis=0), probabilities, atol=0.03)


def test_overlaps_match_a_brute_force_count_on_a_time_grid():
    onsets, durations = np.array([0.0, 0.5, 2.0, 2.2]), np.array([1.0, 1.0, 0.5, 0.1])
    grid = np.arange(0, 3, 1e-4)
    active = (grid >= onsets[:, None]) & (grid < (onsets + durations)[:, None])
    shared = [(active[i] & np.delete(active, i, axis=0).any(axis=0)).sum() * 1e-4 for i in range(4)]
    np.testing.assert_allclose(overlaps(onsets, durations), np.minimum(np.array(shared) / durations, 1), atol=2e-3)


def test_removed_labels_follow_the_flattened_event_order():
    clips = [[Labelled("a"), Labelled("b")], [], [Labelled("c")]]
    scores = np.array([50.0, -50.0, 50.0])  # drop a and c, keep b
    assert removed_labels(clips, scores, 2 / 3, np.random.default_rng(0)) == [{"a"}, set(), {"c"}]


def test_explicit_negatives_are_absent_classes_at_the_given_rate():
    rng = np.random.default_rng(2)
    classes = [str(i) for i in range(6)]
    drawn = [explicit_negatives({"0", "1", "2", "3", "4"}, classes, 1.0, rng) for _ in range(20)]
    assert all(d == ["5"] for d in drawn)  # only one class is absent
    drawn = [explicit_negatives({"0"}, classes, 0.5, rng) for _ in range(400)]
    assert 0.4 < np.mean([bool(d) for d in drawn]) < 0.6
    assert all(len(d) == EXPLICIT_NEGATIVES and "0" not in d and d == sorted(d) for d in drawn if d)


@pytest.mark.parametrize("removal", ["random", "structured"])
def test_remove_positives_takes_the_fraction_of_positives_only(removal: str) -> None:
    rng = np.random.default_rng(0)
    busy = rng.random((400, 6)) < np.linspace(0.05, 0.8, 400)[:, None]  # later clips carry more labels
    removed = remove_positives(busy.astype(np.float32), removal, 0.3, np.random.default_rng(1))
    assert not (removed & ~busy).any()
    assert abs(removed.sum() - 0.3 * busy.sum()) <= 1  # systematic sampling: floor or ceil of the expectation
    share = [removed[rows].sum() / busy[rows].sum() for rows in (slice(0, 200), slice(200, 400))]
    if removal == "structured":  # busier clips lose a larger share of their labels
        assert share[1] > share[0] + 0.05
    else:
        assert abs(share[1] - share[0]) < 0.1
