"""Multi-label evaluation metrics, NumPy in, Python floats out.

``y_true`` is a {0, 1} array of shape [N, C] (N samples, C classes); ``scores`` / ``y_pred`` have the same
shape. What each metric skips:

- ``average_precision_per_class``: NaN for classes with no positive sample.
- ``mean_average_precision``: mean over classes with at least one positive (NaN if there are none).
- ``roc_auc_per_class``: NaN for classes lacking positives or lacking negatives.
- ``d_prime``: mean over classes with both positives and negatives (NaN if there are none); each AUC is
  clipped to [AUC_EPS, 1 - AUC_EPS] so a perfect (or perfectly inverted) class stays finite.
- ``lwlrap``: samples with no positive label carry zero weight (NaN if no sample has a positive).
- ``f1_scores``: macro F1 skips classes where F1 is undefined (tp + fp + fn == 0, i.e. the class is neither
  present nor predicted); micro F1 pools all entries. Both are 0.0 when nothing is positive or predicted.

Ties are handled like scikit-learn: tied scores share one threshold (AP, lwlrap) or an average rank (AUC).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

AUC_EPS = 1e-6
"""AUCs are clipped to [AUC_EPS, 1 - AUC_EPS] before the probit in `d_prime` (|d'| <= about 6.7)."""


def _check_pair(y_true: np.ndarray, other: np.ndarray, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (binary y_true as float, other as float), raising ValueError on bad shapes or labels."""
    y_true, other = np.asarray(y_true), np.asarray(other)
    if y_true.ndim != 2 or y_true.shape != other.shape:
        raise ValueError(
            f"y_true and {other_name} must be 2-D arrays of the same shape [N, C]; got {y_true.shape} and {other.shape}"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y_true.astype(np.float64), other.astype(np.float64)


def _precision_sums(y_true: np.ndarray, scores: np.ndarray, axis: int) -> np.ndarray:
    """Sum, over the positives along ``axis``, of the precision at the positive's score threshold.

    Items are ranked by descending score; a positive's threshold admits every item scoring at least as
    high as it (so ties share one threshold), and the precision there is positives admitted / items admitted.
    """
    y = np.moveaxis(y_true, axis, 0)
    s = np.moveaxis(scores, axis, 0)
    n = s.shape[0]
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    positions = np.arange(n).reshape((n,) + (1,) * (s.ndim - 1))
    is_group_end = np.ones_like(s_sorted, dtype=bool)
    is_group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    # Index of the last item of each item's tie group: running minimum of group-end indices from the bottom.
    group_end = np.where(is_group_end, positions, n)
    group_end = np.minimum.accumulate(group_end[::-1], axis=0)[::-1]
    precision = np.cumsum(y_sorted, axis=0) / (positions + 1)
    return (y_sorted * np.take_along_axis(precision, group_end, axis=0)).sum(axis=0)


def average_precision_per_class(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each class (as sklearn's ``average_precision_score``); NaN without positives."""
    y, s = _check_pair(y_true, scores, "scores")
    n_pos = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, _precision_sums(y, s, axis=0) / n_pos, np.nan)


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro mean of per-class AP over classes with at least one positive (NaN if none)."""
    ap = average_precision_per_class(y_true, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def roc_auc_per_class(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each class via the Mann–Whitney U statistic (average ranks for ties).

    NaN for classes without both positives and negatives.
    """
    # Imported here: scipy.stats takes ~0.9 s to import, which scoring actors and Serve replicas never need.
    from scipy.stats import rankdata

    y, s = _check_pair(y_true, scores, "scores")
    n_pos = y.sum(axis=0)
    n_neg = y.shape[0] - n_pos
    ranks = rankdata(s, method="average", axis=0)
    u = (ranks * y).sum(axis=0) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def d_prime(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean over valid classes of √2·Φ⁻¹(AUC), with AUC clipped to [AUC_EPS, 1 − AUC_EPS] (NaN if none)."""
    auc = roc_auc_per_class(y_true, scores)
    auc = auc[np.isfinite(auc)]
    if auc.size == 0:
        return float("nan")
    return float(np.mean(np.sqrt(2.0) * ndtri(np.clip(auc, AUC_EPS, 1.0 - AUC_EPS))))


def lwlrap(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (NaN if no sample has a positive).

    Equals sklearn's ``label_ranking_average_precision_score`` with ``sample_weight`` = positives per sample,
    i.e. the mean over all positive (sample, label) pairs of #positives ranked ≥ it / #labels ranked ≥ it.
    """
    y, s = _check_pair(y_true, scores, "scores")
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    return float(_precision_sums(y, s, axis=1).sum() / n_pos)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(micro F1, macro F1) of binary predictions.

    Macro averages only classes where F1 is defined (tp + fp + fn > 0); both are 0.0 when no entry is
    positive or predicted.
    """
    y, p = _check_pair(y_true, y_pred, "y_pred")
    if not np.isin(p, (0, 1)).all():
        raise ValueError("y_pred must be binary (0/1 or bool)")
    tp = (y * p).sum(axis=0)
    fp = ((1 - y) * p).sum(axis=0)
    fn = (y * (1 - p)).sum(axis=0)
    denom = 2 * tp + fp + fn
    micro = 2 * tp.sum() / denom.sum() if denom.sum() > 0 else 0.0
    defined = denom > 0
    macro = np.mean(2 * tp[defined] / denom[defined]) if defined.any() else 0.0
    return float(micro), float(macro)


SUMMARY_KEYS = ("map", "d_prime", "lwlrap", "micro_f1", "macro_f1")
"""The keys of `summarize`, in the order every table and summary line shows them."""
SUMMARY_NAMES = {"map": "mAP", "d_prime": "d'", "lwlrap": "lwlrap", "micro_f1": "micro-F1", "macro_f1": "macro-F1"}


def summarize(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All headline metrics; F1 uses predictions ``scores > threshold`` (scores are probabilities)."""
    micro, macro = f1_scores(y_true, np.asarray(scores) > threshold)
    return {
        "map": mean_average_precision(y_true, scores),
        "d_prime": d_prime(y_true, scores),
        "lwlrap": lwlrap(y_true, scores),
        "micro_f1": micro,
        "macro_f1": macro,
    }


def flag_counts(flag_mask: np.ndarray, removed_mask: np.ndarray) -> np.ndarray:
    """Per class [3, C]: flagged, flagged and removed (hits), removed, of bool (or 0/1) masks [n, C]; the counts
    of blocks add up, so `flag_quality` of their sum is that of the whole split."""
    flag, removed = np.asarray(flag_mask).astype(bool), np.asarray(removed_mask).astype(bool)
    if flag.shape != removed.shape:
        raise ValueError(f"flag_mask and removed_mask shapes differ: {flag.shape} vs {removed.shape}")
    return np.stack([flag.sum(axis=0), (flag & removed).sum(axis=0), removed.sum(axis=0)]).astype(np.int64)


def flag_quality(counts: np.ndarray) -> tuple[dict[str, int | float | None], np.ndarray]:
    """Flag ``count``, ``precision`` (None when nothing is flagged) and ``recall`` (None when nothing was
    removed) against the labels truly removed, and the per-class precision (NaN for classes without flags),
    from `flag_counts`."""
    flagged, hits, removed = (np.asarray(row) for row in counts)
    count, n_hits, n_removed = int(flagged.sum()), int(hits.sum()), int(removed.sum())
    summary = {
        "count": count,
        "precision": n_hits / count if count else None,
        "recall": n_hits / n_removed if n_removed else None,
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(flagged > 0, hits / np.maximum(flagged, 1), np.nan)
    return summary, per_class


def flag_precision_recall(flag_mask: np.ndarray, removed_mask: np.ndarray) -> dict[str, int | float | None]:
    """Precision / recall of flagged missing labels against the labels truly removed (see `flag_quality`)."""
    return flag_quality(flag_counts(flag_mask, removed_mask))[0]


def recovered_fraction(value: float, reference: float, baseline: float) -> float | None:
    """(value − baseline) / (reference − baseline): the share of the reference's gain that `value` recovers.

    Gain fraction (reference = perfect-mask student) and gap recovered (reference = oracle) with the teacher as
    baseline. None when the reference does not beat the baseline: there is no gain to share then, and the
    ratio of two negative or near-zero differences would read as a large recovery.
    """
    return None if reference <= baseline else (value - baseline) / (reference - baseline)
