from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymlc.data import LabelVocabulary, ManifestError
from raymlc.data.vocabulary import declare_labels


def test_names_length_membership_and_index() -> None:
    vocabulary = LabelVocabulary(["dog", "cat", "Male speech, man speaking"])
    assert vocabulary.names == ("dog", "cat", "Male speech, man speaking")
    assert len(vocabulary) == 3
    assert "cat" in vocabulary and "bird" not in vocabulary
    assert vocabulary.index("Male speech, man speaking") == 2
    with pytest.raises(ManifestError, match="'bird'"):
        vocabulary.index("bird")


@pytest.mark.parametrize("names", [["a", "b", "a"], ["a", ""], [], ["a", None]])
def test_invalid_names_are_rejected(names: list) -> None:
    with pytest.raises(ValueError):
        LabelVocabulary(names)


def test_is_immutable() -> None:
    vocabulary = LabelVocabulary(["a"])
    with pytest.raises(AttributeError):
        vocabulary.names = ("b",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        vocabulary.extra = 1  # type: ignore[attr-defined]


def test_encode_multi_hot() -> None:
    vocabulary = LabelVocabulary(["a", "b", "c"])
    encoded = vocabulary.encode([["c", "a"], [], ["b"], None])  # type: ignore[list-item]
    expected = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, expected)
    assert vocabulary.encode([]).shape == (0, 3)


def test_encode_unknown_label_names_row_clip_and_label() -> None:
    vocabulary = LabelVocabulary(["a", "b"])
    with pytest.raises(ManifestError, match=r"row 1 \(clip_id 'clip-7'\): unknown label 'zebra'"):
        vocabulary.encode([["a"], ["b", "zebra"]], clip_ids=["clip-3", "clip-7"])
    with pytest.raises(ManifestError, match=r"row 0: unknown label 'zebra'"):
        vocabulary.encode([["zebra"]])
    with pytest.raises(ValueError, match="1 clip ids for 2"):
        vocabulary.encode([["a"], ["b"]], clip_ids=["x"])


def test_decode() -> None:
    vocabulary = LabelVocabulary(["a", "b", "c"])
    assert vocabulary.decode(np.array([1, 0, 1], dtype=np.float32)) == ["a", "c"]
    assert vocabulary.decode(np.array([False, False, False])) == []
    with pytest.raises(ValueError, match="0/1"):
        vocabulary.decode(np.array([0.7, 0.0, 0.2]))
    with pytest.raises(ValueError, match="shape"):
        vocabulary.decode(np.array([1, 0]))


def test_from_table_is_sorted_union_of_label_columns() -> None:
    table = pa.table(
        {
            "labels": pa.array([["dog", "cat"], None, ["cat"]], type=pa.list_(pa.string())),
            "explicit_negatives": pa.array([[], ["bird"], []], type=pa.list_(pa.string())),
            "removed_labels": pa.array([["ant"], [], []], type=pa.list_(pa.string())),
        }
    )
    assert LabelVocabulary.from_table(table).names == ("ant", "bird", "cat", "dog")
    assert LabelVocabulary.from_table(table, columns=("labels",)).names == ("cat", "dog")
    only_labels = table.select(["labels"])
    assert LabelVocabulary.from_table(only_labels).names == ("cat", "dog")


def test_from_table_keeps_declared_order_first() -> None:
    table = pa.table({"labels": pa.array([["zeta"], ["alpha"], ["extra"]], type=pa.list_(pa.string()))})
    declared = declare_labels(table, ["zeta", "never-seen", "alpha"])
    assert LabelVocabulary.from_table(declared).names == ("zeta", "never-seen", "alpha", "extra")


def test_json_round_trip_and_equality() -> None:
    vocabulary = LabelVocabulary(["b", "a", "Swainson's Thrush"])
    text = vocabulary.to_json()
    assert text == '{"labels": ["b", "a", "Swainson\'s Thrush"]}'
    restored = LabelVocabulary.from_json(text)
    assert restored == vocabulary and hash(restored) == hash(vocabulary)
    assert restored != LabelVocabulary(["a", "b", "Swainson's Thrush"])
    assert vocabulary != ["b", "a", "Swainson's Thrush"]
    with pytest.raises(ValueError, match="labels"):
        LabelVocabulary.from_json('["a"]')


def test_encode_pairs_lists_the_entries_of_the_multi_hot_matrix() -> None:
    vocabulary = LabelVocabulary(["a", "b", "c"])
    lists = [["c", "a"], [], None, ["b"]]
    rows, columns = vocabulary.encode_pairs(pa.chunked_array([pa.array(lists[:2]), pa.array(lists[2:])]))
    dense = vocabulary.encode(lists)
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [tuple(p) for p in np.argwhere(dense).tolist()]
    with pytest.raises(ManifestError, match="unknown label 'z'"):
        vocabulary.encode_pairs(pa.array([["a"], ["z"]]))
