"""The ordered set of label names a model predicts, and the multi-hot encoding it defines."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlc.data.schema import LABEL_COLUMNS, ManifestError

# Schema-metadata key under which a reader records the label names its source declares, in declared order
# (MULAN .xml, AudioSet class index), so the vocabulary keeps that order and labels without positives.
DECLARED_LABELS_KEY = b"raymlc.declared_labels"


def declare_labels(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """`table` with `names` recorded as its declared label names."""
    metadata = dict(table.schema.metadata or {})
    metadata[DECLARED_LABELS_KEY] = json.dumps(list(names)).encode()
    return table.replace_schema_metadata(metadata)


def declared_labels(table: pa.Table) -> list[str] | None:
    """The label names recorded by `declare_labels`, or None."""
    text = (table.schema.metadata or {}).get(DECLARED_LABELS_KEY)
    return None if text is None else json.loads(text)


class LabelVocabulary:
    """Immutable ordered label names; position i is column i of every multi-hot matrix."""

    __slots__ = ("_index", "_names")

    def __init__(self, names: Sequence[str]) -> None:
        names = tuple(names)
        if not names:
            raise ValueError("a label vocabulary needs at least one label")
        for position, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ValueError(f"label {position} must be a non-empty string, got {name!r}")
        index = {name: position for position, name in enumerate(names)}
        if len(index) != len(names):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"duplicate label names: {duplicates}")
        self._names = names
        self._index = index

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return self._names == other._names if isinstance(other, LabelVocabulary) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._names)

    def __repr__(self) -> str:
        return f"LabelVocabulary({list(self._names)!r})"

    def index(self, name: str) -> int:
        """Column of `name`; ManifestError when it is not in the vocabulary."""
        try:
            return self._index[name]
        except KeyError:
            raise ManifestError(f"unknown label {name!r} (not among the {len(self)} labels)") from None

    def encode(self, label_lists: Sequence[Sequence[str]], clip_ids: Sequence[str] | None = None) -> np.ndarray:
        """Multi-hot float32 matrix [N, C]; an unknown label raises ManifestError naming the 0-based row."""
        if clip_ids is not None and len(clip_ids) != len(label_lists):
            raise ValueError(f"{len(clip_ids)} clip ids for {len(label_lists)} label lists")
        matrix = np.zeros((len(label_lists), len(self)), dtype=np.float32)
        for row, names in enumerate(label_lists):
            for name in names or ():
                column = self._index.get(name)
                if column is None:
                    clip = "" if clip_ids is None else f" (clip_id {clip_ids[row]!r})"
                    raise ManifestError(f"row {row}{clip}: unknown label {name!r} (not in the vocabulary)")
                matrix[row, column] = 1.0
        return matrix

    def encode_pairs(self, label_lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(row int64 [P], column int64 [P]) of every label in a list column, without a dense [N, C] matrix;
        an unknown label raises ManifestError naming it."""
        column = label_lists.combine_chunks() if isinstance(label_lists, pa.ChunkedArray) else label_lists
        rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
        names = pc.list_flatten(column).to_pylist()
        try:
            columns = np.fromiter((self._index[name] for name in names), np.int64, len(names))
        except KeyError as error:
            raise ManifestError(f"unknown label {error.args[0]!r} (not in the vocabulary)") from None
        return rows, columns

    def decode(self, row: np.ndarray) -> list[str]:
        """Names of the labels set in a 0/1 row of length C, in vocabulary order."""
        values = np.asarray(row)
        if values.shape != (len(self),):
            raise ValueError(f"expected a row of shape ({len(self)},), got {values.shape}")
        if not np.isin(values, (0, 1)).all():
            raise ValueError("decode takes a 0/1 row; threshold scores first")
        return [self._names[column] for column in np.flatnonzero(values)]

    @classmethod
    def from_table(cls, table: pa.Table, columns: Sequence[str] = LABEL_COLUMNS) -> LabelVocabulary:
        """Sorted union of the label names in the list `columns` of `table` that it has.

        When a reader declared the source's labels (`declare_labels`), those come first in declared order
        (including labels with no row), followed by any other names found, sorted.
        """
        found: set[str] = set()
        for name in columns:
            if name in table.column_names:
                values = pc.list_flatten(table.column(name))
                found.update(pc.unique(values.drop_null()).to_pylist())
        declared = declared_labels(table) or []
        return cls([*declared, *sorted(found.difference(declared))])

    def to_json(self) -> str:
        return json.dumps({"labels": list(self._names)})

    @classmethod
    def from_json(cls, text: str) -> LabelVocabulary:
        payload = json.loads(text)
        if not isinstance(payload, dict) or not isinstance(payload.get("labels"), list):
            raise ValueError('a label vocabulary JSON is {"labels": [name, ...]}')
        return cls(payload["labels"])
