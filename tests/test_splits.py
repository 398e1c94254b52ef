from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from raymlc.data import LabelVocabulary, assign_splits, normalize_manifest, read_manifest


def manifest(label_lists: list[list[str]], splits: list[str | None] | None = None) -> pa.Table:
    columns = {
        "clip_id": [f"c{row}" for row in range(len(label_lists))],
        "audio": [f"/a/{row}.wav" for row in range(len(label_lists))],
        "labels": pa.array(label_lists, type=pa.list_(pa.string())),
    }
    if splits is not None:
        columns["split"] = pa.array(splits, type=pa.string())
    return normalize_manifest(pa.table(columns))


# 100 rows: 40 "a", 30 "b", 20 "a"+"c", 10 without labels.
LABEL_LISTS = [["a"]] * 40 + [["b"]] * 30 + [["a", "c"]] * 20 + [[]] * 10
VOCABULARY = LabelVocabulary(["a", "b", "c"])


def split_counts(table: pa.Table) -> dict[tuple[str, ...], Counter]:
    """Per label set, how many rows went to each split."""
    counts: dict[tuple[str, ...], Counter] = {}
    for labels, split in zip(table.column("labels").to_pylist(), table.column("split").to_pylist(), strict=True):
        counts.setdefault(tuple(labels), Counter())[split] += 1
    return counts


def test_stratified_fractions_including_rows_without_labels() -> None:
    table = assign_splits(manifest(LABEL_LISTS), VOCABULARY, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert Counter(table.column("split").to_pylist()) == {"train": 70, "val": 20, "test": 10}
    counts = split_counts(table)
    # Every label set, the empty one included, is spread over all three splits close to 70/20/10.
    assert counts[("a",)] == {"train": 28, "val": 8, "test": 4}
    assert counts[("b",)] == {"train": 21, "val": 6, "test": 3}
    assert counts[("a", "c")] == {"train": 14, "val": 4, "test": 2}
    assert counts[()] == {"train": 7, "val": 2, "test": 1}


def test_deterministic_for_a_seed() -> None:
    table = manifest(LABEL_LISTS)
    first = assign_splits(table, VOCABULARY, 0.2, 0.1, seed=3).column("split")
    assert assign_splits(table, VOCABULARY, 0.2, 0.1, seed=3).column("split").equals(first)
    assert not assign_splits(table, VOCABULARY, 0.2, 0.1, seed=4).column("split").equals(first)


def test_existing_splits_are_kept() -> None:
    given = ["test"] * 10 + [None] * 90
    table = assign_splits(manifest(LABEL_LISTS, given), VOCABULARY, val_fraction=0.2, test_fraction=0.0, seed=0)
    splits = table.column("split").to_pylist()
    assert splits[:10] == ["test"] * 10
    assert Counter(splits[10:]) == {"train": 72, "val": 18}
    complete = manifest(LABEL_LISTS, ["train"] * 100)
    assert assign_splits(complete, VOCABULARY, 0.2, 0.1, seed=0) is complete


def test_table_without_split_column_and_without_labels() -> None:
    table = pa.table({"clip_id": ["x", "y", "z", "w"], "labels": pa.array([[]] * 4, type=pa.list_(pa.string()))})
    result = assign_splits(table, LabelVocabulary(["a"]), val_fraction=0.25, test_fraction=0.25, seed=0)
    assert Counter(result.column("split").to_pylist()) == {"train": 2, "val": 1, "test": 1}


def test_bad_fractions_and_unknown_labels() -> None:
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(manifest(LABEL_LISTS), VOCABULARY, 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match="too few"):
        assign_splits(manifest([["a"], ["b"]]), VOCABULARY, 0.4, 0.4, seed=0)
    with pytest.raises(ValueError, match="unknown label 'd'"):
        assign_splits(manifest([["a"], ["d"]]), VOCABULARY, 0.0, 0.5, seed=0)


def test_birds_split_spreads_unlabelled_rows(shared_data: Path) -> None:
    table = read_manifest(str(shared_data / "mulan_birds" / "birds-train.arff"))
    vocabulary = LabelVocabulary.from_table(table)
    table = assign_splits(table, vocabulary, val_fraction=0.2, test_fraction=0.2, seed=0)
    counts = Counter(table.column("split").to_pylist())
    assert abs(counts["val"] - 64) <= 2 and abs(counts["test"] - 64) <= 2
    unlabelled = Counter(
        split
        for labels, split in zip(table.column("labels").to_pylist(), table.column("split").to_pylist(), strict=True)
        if not labels
    )
    share = unlabelled["test"] / sum(unlabelled.values())
    assert 0.15 < share < 0.25
