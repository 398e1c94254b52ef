"""Brute-force flag selection for tests, independent of `raymlc.flagging`: per class, the implicit negatives
(neither positive nor explicit negative) sorted by (score desc, row index asc), the first round-half-up(p % of
their count)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def multi_hot(label_lists: list[list[str] | None], names: tuple[str, ...]) -> np.ndarray:
    """Bool [N, C] of the label lists, columns in the order of `names`."""
    return np.array([[name in set(labels or ()) for name in names] for labels in label_lists], dtype=bool).reshape(
        len(label_lists), len(names)
    )


def brute_force_flags(
    rows: np.ndarray, scores: np.ndarray, positives: np.ndarray, explicit: np.ndarray, percent: int
) -> list[np.ndarray]:
    """Per class, the flagged row indices in rank order; `percent` an integer, so rounding is exact."""
    implicit = ~(positives | explicit)
    chosen = []
    for c in range(scores.shape[1]):
        candidates = np.flatnonzero(implicit[:, c])
        order = candidates[np.lexsort((rows[candidates], -scores[candidates, c].astype(np.float64)))]
        k = (len(candidates) * percent + 50) // 100
        chosen.append(rows[order[:k]].astype(np.int64))
    return chosen


def scores_table_flags(scores: pa.Table, names: tuple[str, ...], percent: int) -> list[np.ndarray]:
    """`brute_force_flags` of the rows of a teacher scores table (row_index, labels, explicit_negatives,
    scores, error) that have scores."""
    scored = scores.filter(pc.is_null(scores["error"]))
    return brute_force_flags(
        np.array(scored["row_index"].to_pylist(), dtype=np.int64),
        np.array(scored["scores"].to_pylist(), dtype=np.float64).reshape(len(scored), len(names)),
        multi_hot(scored["labels"].to_pylist(), names),
        multi_hot(scored["explicit_negatives"].to_pylist(), names),
        percent,
    )
