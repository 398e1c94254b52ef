"""Relabeling with a trained tagger (pure: no Ray): proposals, per-class summary, review queue, part assembly.

A *proposal* is an implicit negative of a clip (a label of the tagger's vocabulary that is neither in the
clip's `labels` nor in its `explicit_negatives`) that the tagger calls present under its adaptive threshold:
margin = z − θ(x) > `min_margin` (logit scale; `min_margin=0` is exactly `TagResult.present`). Its score
is the probability sigmoid(z). Explicit negatives are never proposed, and labels the tagger does not know
are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.special import expit


@dataclass(frozen=True)
class Proposals:
    """The proposals of one clip, by descending margin (ties in vocabulary order)."""

    labels: list[str]
    scores: list[float]  # sigmoid(z)
    margins: list[float]  # z − θ(x), logits


def propose(
    logits: np.ndarray,
    thresholds: np.ndarray,
    names: Sequence[str],
    labels: Sequence[Sequence[str]],
    explicit_negatives: Sequence[Sequence[str]],
    min_margin: float = 0.0,
) -> list[Proposals]:
    """Proposals for a batch of B clips from the tagger's logits and thresholds [B, C] over `names`."""
    logits = np.asarray(logits, np.float32)
    margins = logits - np.asarray(thresholds, np.float32)
    if margins.shape != (len(labels), len(names)) or len(explicit_negatives) != len(labels):
        raise ValueError(
            f"expected [B, C] = [{len(labels)}, {len(names)}] outputs and {len(labels)} label lists, "
            f"got outputs {margins.shape} and {len(explicit_negatives)} explicit-negative lists"
        )
    column = {name: index for index, name in enumerate(names)}
    implicit = np.ones(margins.shape, dtype=bool)
    for row, (positive, negative) in enumerate(zip(labels, explicit_negatives, strict=True)):
        known = [column[name] for name in (*(positive or ()), *(negative or ())) if name in column]
        implicit[row, known] = False
    chosen = implicit & (margins > min_margin)
    probabilities = expit(logits)
    result = []
    for row in range(len(labels)):
        columns = np.flatnonzero(chosen[row])
        columns = columns[np.argsort(-margins[row, columns], kind="stable")]
        result.append(
            Proposals(
                [names[c] for c in columns],
                [float(probabilities[row, c]) for c in columns],
                [float(margins[row, c]) for c in columns],
            )
        )
    return result


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


class ProposalSummary:
    """Per-class counts over the clips a relabel run scanned; `update` per batch, `to_dict` at the end.

    When clips carry `removed_labels` (the truth of the demo and benchmarks), it also counts how many
    proposals are removed labels: precision = proposed ∩ removed / proposed, recall = ∩ / removed.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._column = {name: index for index, name in enumerate(self.names)}
        self.clips_scanned = 0
        self.rejected = 0
        shape = len(self.names)
        self.labelled, self.explicit, self.proposals, self.removed, self.recovered = (
            np.zeros(shape, np.int64) for _ in range(5)
        )

    def _count(self, counts: np.ndarray, names: Sequence[str] | None) -> None:
        for column in {self._column[name] for name in names or () if name in self._column}:
            counts[column] += 1

    def update(
        self,
        labels: Sequence[Sequence[str]],
        explicit_negatives: Sequence[Sequence[str]],
        removed_labels: Sequence[Sequence[str]],
        proposed: Sequence[Sequence[str]],
        rejected: Sequence[bool],
    ) -> None:
        """Add a batch of clips; rejected clips (unreadable) are only counted as such."""
        for row, skip in enumerate(rejected):
            if skip:
                self.rejected += 1
                continue
            self.clips_scanned += 1
            self._count(self.labelled, labels[row])
            self._count(self.explicit, explicit_negatives[row])
            self._count(self.proposals, proposed[row])
            self._count(self.removed, removed_labels[row])
            self._count(self.recovered, set(proposed[row] or ()).intersection(removed_labels[row] or ()))

    def to_dict(self) -> dict:
        """JSON-ready totals and per-class rows (rates are None where undefined)."""
        has_truth = bool(self.removed.sum())
        per_class = {}
        for column, name in enumerate(self.names):
            implicit = self.clips_scanned - int(self.labelled[column]) - int(self.explicit[column])
            row = {
                "clips_scanned": self.clips_scanned,
                "labelled": int(self.labelled[column]),
                "explicit_negatives": int(self.explicit[column]),
                "implicit_negatives": implicit,
                "proposals": int(self.proposals[column]),
                "proposal_rate": _ratio(int(self.proposals[column]), self.clips_scanned),
            }
            if has_truth:
                row |= self._truth(int(self.proposals[column]), int(self.removed[column]), int(self.recovered[column]))
            per_class[name] = row
        total = {
            "clips": self.clips_scanned + self.rejected,
            "clips_scanned": self.clips_scanned,
            "rejected": self.rejected,
            "proposals": int(self.proposals.sum()),
            "proposal_rate": _ratio(int(self.proposals.sum()), self.clips_scanned),
        }
        if has_truth:
            total |= self._truth(int(self.proposals.sum()), int(self.removed.sum()), int(self.recovered.sum()))
        return {"total": total, "per_class": per_class}

    @staticmethod
    def _truth(proposals: int, removed: int, recovered: int) -> dict:
        return {
            "removed_labels": removed,
            "proposals_in_removed": recovered,
            "precision": _ratio(recovered, proposals),
            "recall": _ratio(recovered, removed),
        }


class ReviewQueue:
    """The `cap` most confident proposals of each class (by margin, then row), for a person to verify."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._entries: dict[str, list[tuple[float, int, dict]]] = {}

    def add(self, label: str, margin: float, row_index: int, entry: dict) -> None:
        """Offer one proposal; `entry` holds what the reviewer sees (clip id, audio, segment, margin...)."""
        if self.cap:
            self._entries.setdefault(label, []).append((-margin, row_index, entry))

    def trim(self) -> None:
        """Drop everything beyond the top `cap` of each class (call after each batch to bound memory)."""
        for entries in self._entries.values():
            entries.sort(key=lambda item: item[:2])
            del entries[self.cap :]

    def rows(self) -> list[dict]:
        """The queue: classes in name order, each by rank (1 = most confident)."""
        self.trim()
        return [
            {"label": label, "rank": rank, **entry}
            for label in sorted(self._entries)
            for rank, (_, _, entry) in enumerate(self._entries[label], start=1)
        ]


class PartAssembler:
    """Collects streamed proposal rows until a part has all of its rows, then hands the part over."""

    def __init__(self, total_rows: int, rows_per_part: int) -> None:
        self.total_rows, self.rows_per_part = total_rows, rows_per_part
        self._pieces: dict[int, list[pa.Table]] = {}
        self._counts: dict[int, int] = {}

    def part_rows(self, part: int) -> tuple[int, int]:
        """[start, stop) rows of `part`."""
        start = part * self.rows_per_part
        return start, min(start + self.rows_per_part, self.total_rows)

    def add(self, batch: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        """The parts this batch completes, each as (part, its rows sorted by row_index)."""
        parts = batch["row_index"].to_numpy() // self.rows_per_part
        for part in np.unique(parts):
            piece = batch.filter(pa.array(parts == part))
            part = int(part)
            self._pieces.setdefault(part, []).append(piece)
            self._counts[part] = self._counts.get(part, 0) + len(piece)
            start, stop = self.part_rows(part)
            if self._counts[part] == stop - start:
                rows = pa.concat_tables(self._pieces.pop(part)).sort_by("row_index")
                del self._counts[part]
                if rows["row_index"].to_pylist() != list(range(start, stop)):
                    raise RuntimeError(f"part {part}: rows are not exactly {start}..{stop - 1}")
                yield part, rows

    @property
    def incomplete(self) -> list[int]:
        return sorted(self._counts)
