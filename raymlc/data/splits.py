"""Seeded multi-label stratified train/val/test assignment for manifests without a split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raymlc.data.vocabulary import LabelVocabulary


def assign_splits(
    table: pa.Table, vocabulary: LabelVocabulary, val_fraction: float, test_fraction: float, seed: int
) -> pa.Table:
    """Fill the null `split` entries with train/val/test, stratified on the multi-hot `labels`.

    Only rows without a split are assigned (existing splits are kept), in the given fractions of those rows.
    Rows with no label are stratified as if "no label" were one more label. Deterministic for a seed.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need fractions >= 0 with a sum < 1, got val {val_fraction}, test {test_fraction}")
    splits = table.column("split").to_pylist() if "split" in table.column_names else [None] * table.num_rows
    unassigned = np.array([row for row, split in enumerate(splits) if split is None], dtype=np.int64)
    if len(unassigned) == 0:
        return table
    labels = table.column("labels").take(pa.array(unassigned))
    clip_ids = table.column("clip_id").take(pa.array(unassigned)).to_pylist()
    targets = vocabulary.encode(labels.to_pylist(), clip_ids)
    targets = np.column_stack([targets, targets.sum(axis=1) == 0])
    names = _stratified_names(targets, val_fraction, test_fraction, seed)
    for row, name in zip(unassigned, names, strict=True):
        splits[row] = name
    column = pa.array(splits, type=pa.string())
    if "split" in table.column_names:
        return table.set_column(table.schema.get_field_index("split"), "split", column)
    return table.append_column("split", column)


def _stratified_names(targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """'train'/'val'/'test' per row of a 0/1 matrix: test is split off first, then val from the rest."""
    # Imported here: it pulls in scikit-learn (~1.5 s), which scoring actors and Serve replicas never need.
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    names = np.full(len(targets), "train", dtype=object)
    remaining = np.arange(len(targets))
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        count = round(fraction * len(targets))
        if count == 0:
            continue
        if count >= len(remaining):
            raise ValueError(f"{len(targets)} rows are too few for the requested val/test fractions")
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=count, random_state=seed)
        keep, chosen = next(splitter.split(np.zeros(len(remaining)), targets[remaining]))
        names[remaining[chosen]] = name
        remaining = remaining[keep]
    return names
