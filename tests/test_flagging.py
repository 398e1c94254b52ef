"""Blockwise flagging against an independent full-matrix brute force."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from raymlc.flagging import (
    TopKFlagger,
    crossfit_folds,
    flag_budget,
    flag_mask_for,
    flags_from_pairs,
    implicit_negative_counts,
    load_flags,
    random_flags,
    random_scores,
    save_flags,
    select_top,
)


def _case(
    seed: int, n: int = 300, n_classes: int = 9, decimals: int | None = None, degenerate: bool = True
) -> dict[str, np.ndarray]:
    """Random labels and scores; global row ids are a shuffled, gapped range. When `degenerate`, class 0
    has no implicit negative and class 1 exactly one (at position 7)."""
    rng = np.random.default_rng(seed)
    positives = rng.random((n, n_classes)) < 0.1
    explicit = ~positives & (rng.random((n, n_classes)) < 0.2)
    if degenerate:
        positives[:, 0] = rng.random(n) < 0.5
        explicit[:, 0] = ~positives[:, 0]
        positives[:, 1], explicit[:, 1] = True, False
        positives[7, 1] = False
    scores = rng.standard_normal((n, n_classes)).astype(np.float32)
    if decimals is not None:
        scores = np.round(scores, decimals)
    rows = rng.permutation(n) * 3 + 5
    return {"rows": rows, "scores": scores, "positives": positives, "explicit": explicit}


def _reference(case: dict[str, np.ndarray], budget: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class (rows, scores) of the first k_c implicit negatives sorted by (-score, row)."""
    implicit = ~case["positives"] & ~case["explicit"]
    out = []
    for c in range(len(budget)):
        candidates = np.flatnonzero(implicit[:, c])
        order = sorted(candidates, key=lambda i: (-float(case["scores"][i, c]), int(case["rows"][i])))
        chosen = np.array(order[: budget[c]], dtype=np.int64)
        out.append((case["rows"][chosen], case["scores"][chosen, c].astype(np.float64)))
    return out


def _counts(case: dict[str, np.ndarray]) -> np.ndarray:
    return implicit_negative_counts(case["positives"], case["explicit"])


def _blocks(case: dict[str, np.ndarray], cuts: list[int]) -> list[tuple[np.ndarray, ...]]:
    bounds = [0, *cuts, len(case["rows"])]
    return [
        tuple(case[key][lo:hi] for key in ("rows", "scores", "positives", "explicit"))
        for lo, hi in itertools.pairwise(bounds)
    ]


def _random_cuts(rng: np.random.Generator, n: int) -> list[int]:
    """Sorted cut points, with repeats (empty blocks) and a one-row block."""
    cuts = sorted(rng.integers(0, n + 1, size=int(rng.integers(1, 8))).tolist())
    return sorted([*cuts, cuts[0], 1, 2])


def _assert_matches(result, reference) -> None:
    for c, (rows, scores) in enumerate(reference):
        np.testing.assert_array_equal(result.class_rows(c), rows)
        np.testing.assert_array_equal(result.class_scores(c), scores)
    np.testing.assert_array_equal(result.counts, [len(rows) for rows, _ in reference])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("mode", [{"percent": 7}, {"percent": 33.3}, {"top_k": 5}])
@pytest.mark.parametrize("degenerate", [True, False])
def test_blockwise_update_and_shuffled_merge_match_brute_force(seed, decimals, mode, degenerate):
    case = _case(seed, decimals=decimals, degenerate=degenerate)
    rng = np.random.default_rng(100 + seed)
    blocks = _blocks(case, _random_cuts(rng, len(case["rows"])))
    block_counts = [implicit_negative_counts(pos, exp) for _, _, pos, exp in blocks]
    budget = flag_budget(np.sum(block_counts, axis=0), **mode)
    reference = _reference(case, budget)

    sequential = TopKFlagger(budget)
    for block in blocks:
        sequential.update(*block)
    _assert_matches(sequential.result(), reference)

    partials = []
    for block in blocks:
        partials.append(TopKFlagger(budget))
        partials[-1].update(*block)
    merged = TopKFlagger(budget)
    for index in rng.permutation(len(partials)):
        merged.merge(partials[index])
    _assert_matches(merged.result(), reference)


def test_ties_are_broken_by_row_index():
    scores = np.array([[0.5], [0.9], [0.5], [0.5], [0.9]], dtype=np.float32)
    rows = np.array([40, 30, 10, 20, 50])
    no_labels = np.zeros((5, 1), dtype=bool)
    flagger = TopKFlagger(np.array([3]))
    flagger.update(rows[:2], scores[:2], no_labels[:2], no_labels[:2])
    flagger.update(rows[2:], scores[2:], no_labels[2:], no_labels[2:])
    result = flagger.result()
    np.testing.assert_array_equal(result.class_rows(0), [30, 50, 10])
    np.testing.assert_array_equal(result.class_scores(0), scores[[1, 4, 2], 0])


def test_explicit_negatives_and_positives_are_never_flagged_even_with_top_scores():
    case = _case(7)
    case["scores"][case["positives"] | case["explicit"]] = np.inf
    budget = flag_budget(_counts(case), percent=100)
    flagger = TopKFlagger(budget)
    flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
    mask = flag_mask_for(case["rows"], flagger.result())
    assert not (mask & (case["positives"] | case["explicit"])).any()
    np.testing.assert_array_equal(mask, ~case["positives"] & ~case["explicit"])


def test_classes_without_implicit_negatives_get_no_flags():
    case = _case(3)
    counts = _counts(case)
    assert counts[0] == 0 and counts[1] == 1
    for budget in (flag_budget(counts, percent=50), flag_budget(counts, top_k=4)):
        flagger = TopKFlagger(budget)
        flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
        result = flagger.result()
        assert result.counts[0] == 0
        np.testing.assert_array_equal(result.class_rows(1), [case["rows"][7]])


def test_zero_percent_flags_nothing():
    case = _case(1)
    budget = flag_budget(_counts(case), percent=0)
    assert not budget.any()
    flagger = TopKFlagger(budget)
    flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
    result = flagger.result()
    assert result.rows.size == 0
    assert not flag_mask_for(case["rows"], result).any()


def test_top_k_budget_is_capped_by_the_count():
    np.testing.assert_array_equal(flag_budget(np.array([0, 3, 10, 100]), top_k=5), [0, 3, 5, 5])


@pytest.mark.parametrize(
    ("percent", "count", "expected"),
    [
        (1, 250, 3),  # 2.5 rounds up
        (1, 249, 2),
        (1, 150, 2),
        (1, 50, 1),
        (1, 49, 0),
        (0.1, 2500, 3),  # exact decimal, no binary-float drift below 2.5
        (2, 125, 3),
        (33.3, 15, 5),  # 4.995
        (100, 17, 17),
        (0, 10**9, 0),
    ],
)
def test_percent_budget_rounds_half_up(percent, count, expected):
    assert flag_budget(np.array([count]), percent=percent)[0] == expected


BAD_MODES = [{}, {"percent": 1, "top_k": 1}, {"percent": -1}, {"percent": 101}, {"top_k": -1}]


@pytest.mark.parametrize("kwargs", BAD_MODES)
def test_budget_rejects_bad_modes(kwargs):
    with pytest.raises(ValueError):
        flag_budget(np.array([10]), **kwargs)


def test_budget_rejects_bad_counts():
    with pytest.raises(ValueError, match="non-negative"):
        flag_budget(np.array([-1, 2]), percent=1)


def test_update_rejects_mismatched_shapes_and_nan_scores():
    flagger = TopKFlagger(np.array([1, 1]))
    labels = np.zeros((3, 2), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        flagger.update(np.arange(3), np.zeros((3, 3)), labels, labels)
    with pytest.raises(ValueError, match="row_index"):
        flagger.update(np.arange(3) - 1, np.zeros((3, 2)), labels, labels)
    scores = np.zeros((3, 2))
    scores[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        flagger.update(np.arange(3), scores, labels, labels)
    positives = labels.copy()
    positives[1, 0] = True
    flagger.update(np.arange(3), scores, positives, labels)  # NaN at a positive is ignored


def test_merge_rejects_a_different_budget():
    with pytest.raises(ValueError, match="budget"):
        TopKFlagger(np.array([1, 2])).merge(TopKFlagger(np.array([1, 3])))


def test_flag_pairs_are_class_major_in_rank_order():
    case = _case(5)
    budget = flag_budget(_counts(case), top_k=3)
    flagger = TopKFlagger(budget)
    flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
    rows, classes = flagger.result().flag_pairs()
    expected = [(int(r), c) for c, (ref_rows, _) in enumerate(_reference(case, budget)) for r in ref_rows]
    assert list(zip(rows.tolist(), classes.tolist(), strict=True)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_flag_mask_for_matches_the_flag_pairs_blockwise(seed):
    case = _case(seed, decimals=1)
    budget = flag_budget(_counts(case), percent=20)
    flagger = TopKFlagger(budget)
    flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
    result = flagger.result()
    expected = np.zeros(case["scores"].shape, dtype=bool)
    position = {int(r): i for i, r in enumerate(case["rows"])}
    for r, c in zip(*result.flag_pairs(), strict=True):
        expected[position[int(r)], c] = True
    rng = np.random.default_rng(seed)
    for rows, *_ in _blocks(case, sorted(rng.integers(0, len(case["rows"]), 4).tolist())):
        np.testing.assert_array_equal(flag_mask_for(rows, result), expected[[position[r] for r in rows]])
    unknown = np.array([0, 1, 2, 10**6])  # rows never offered: no flags
    assert not flag_mask_for(unknown, result).any()


@pytest.mark.parametrize("seed", range(3))
def test_random_flags_counts_and_disjointness(seed):
    case = _case(seed)
    budget = flag_budget(_counts(case), percent=25)
    n = len(case["rows"])
    result = random_flags(case["positives"], case["explicit"], budget, seed=seed)
    np.testing.assert_array_equal(result.budget, budget)
    mask = flag_mask_for(np.arange(n), result)
    np.testing.assert_array_equal(mask.sum(axis=0), budget)
    np.testing.assert_array_equal(result.counts, budget)
    assert not (mask & (case["positives"] | case["explicit"])).any()
    again = random_flags(case["positives"], case["explicit"], budget, seed)
    np.testing.assert_array_equal(flag_mask_for(np.arange(n), again), mask)
    other = random_flags(case["positives"], case["explicit"], budget, seed + 1)
    assert not np.array_equal(flag_mask_for(np.arange(n), other), mask)


def test_random_flags_are_uniform_over_implicit_negatives():
    n, trials = 40, 400
    no_labels = np.zeros((n, 1), dtype=bool)
    hits = sum(
        flag_mask_for(np.arange(n), random_flags(no_labels, no_labels, np.array([10]), seed))[:, 0]
        for seed in range(trials)
    )
    expected = trials * 10 / n
    # Each row's hit count is Binomial(400, 1/4): sd ~8.7; 5 sd bounds.
    assert np.abs(hits - expected).max() < 5 * np.sqrt(trials * 0.25 * 0.75)


@pytest.mark.parametrize("seed", range(3))
def test_select_top_matches_brute_force_on_rows_0_to_n(seed):
    case = _case(seed, decimals=1)
    case["rows"] = np.arange(len(case["rows"]))  # select_top numbers the rows of the split 0..N-1
    budget = flag_budget(_counts(case), percent=20)
    result = select_top(case["scores"], case["positives"], case["explicit"], budget)
    np.testing.assert_array_equal(result.budget, budget)
    _assert_matches(result, _reference(case, budget))


def test_saved_flags_load_back_identical(tmp_path):
    case = _case(4, decimals=1)
    budget = flag_budget(_counts(case), top_k=6)
    flagger = TopKFlagger(budget)
    flagger.update(case["rows"], case["scores"], case["positives"], case["explicit"])
    result = flagger.result()
    save_flags(result, str(tmp_path / "flags.parquet"))
    loaded = load_flags(str(tmp_path / "flags.parquet"))
    for name in ("budget", "offsets", "rows", "scores"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name), err_msg=name)
    np.testing.assert_array_equal(flag_mask_for(case["rows"], loaded), flag_mask_for(case["rows"], result))
    empty = TopKFlagger(np.zeros(3, np.int64)).result()  # no flags at all still round-trips its classes
    save_flags(empty, str(tmp_path / "empty.parquet"))
    assert load_flags(str(tmp_path / "empty.parquet")).num_classes == 3


def test_flags_from_pairs_flags_exactly_the_pairs():
    rows, classes = np.array([4, 1, 4, 0, 2]), np.array([2, 0, 0, 2, 2])
    result = flags_from_pairs(rows, classes, num_classes=4)
    np.testing.assert_array_equal(result.budget, [2, 0, 3, 0])
    np.testing.assert_array_equal(result.class_rows(0), [1, 4])  # equal scores: ranked by row
    np.testing.assert_array_equal(result.class_rows(2), [0, 2, 4])
    expected = np.zeros((5, 4), dtype=bool)
    expected[rows, classes] = True
    np.testing.assert_array_equal(flag_mask_for(np.arange(5), result), expected)
    scored = flags_from_pairs(rows, classes, 4, scores=np.array([0.1, 0.2, 0.9, 0.3, 0.5]))
    np.testing.assert_array_equal(scored.class_rows(2), [2, 0, 4])
    np.testing.assert_array_equal(scored.class_scores(2), [0.5, 0.3, 0.1])


def test_random_scores_do_not_depend_on_blocking():
    rows = np.array([5, 2, 9, 1000])
    whole = random_scores(rows, 6, seed=3)
    parts = [random_scores(rows[:1], 6, seed=3), random_scores(rows[1:], 6, seed=3)]
    np.testing.assert_array_equal(np.vstack(parts), whole)
    assert ((whole >= 0) & (whole < 1)).all()
    assert len(np.unique(whole)) == whole.size


def test_flagger_and_result_survive_pickling():
    case = _case(2)
    budget = flag_budget(_counts(case), percent=10)
    blocks = _blocks(case, [150])
    first, second = TopKFlagger(budget), TopKFlagger(budget)
    first.update(*blocks[0])
    second.update(*blocks[1])
    merged = pickle.loads(pickle.dumps(first)).merge(pickle.loads(pickle.dumps(second)))
    result = pickle.loads(pickle.dumps(merged.result()))
    _assert_matches(result, _reference(case, budget))
    np.testing.assert_array_equal(flag_mask_for(case["rows"], result).sum(axis=0), budget)


def test_crossfit_folds_are_balanced_seeded_and_need_two_folds():
    folds = crossfit_folds(103, 3, seed=5)
    np.testing.assert_array_equal(np.bincount(folds), [35, 34, 34])
    np.testing.assert_array_equal(folds, crossfit_folds(103, 3, seed=5))
    assert not np.array_equal(folds, crossfit_folds(103, 3, seed=6))
    with pytest.raises(ValueError, match="at least 2 folds"):
        crossfit_folds(10, 1, seed=0)
