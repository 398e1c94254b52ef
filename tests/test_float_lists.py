"""float32 arrays <-> Arrow list columns, checked against pyarrow's own (slow, boxed) conversions."""

import numpy as np
import pyarrow as pa
import pytest

from raymlc.data.float_lists import to_arrays, to_list_array


def _random_arrays(seed: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng(seed)
    return [None if n < 0 else rng.standard_normal(n).astype(np.float32) for n in rng.integers(-2, 7, size=25)]


@pytest.mark.parametrize("seed", range(3))
def test_to_list_array_matches_pyarrow(seed: int) -> None:
    arrays = _random_arrays(seed)
    expected = pa.array([None if a is None else a.tolist() for a in arrays], type=pa.list_(pa.float32()))
    assert to_list_array(arrays).equals(expected)


@pytest.mark.parametrize("seed", range(3))
def test_to_arrays_reads_filtered_sliced_and_chunked_columns(seed: int) -> None:
    arrays = _random_arrays(seed)
    column = to_list_array(arrays)
    present = pa.array([a is not None for a in arrays])
    kept = [a for a in arrays if a is not None]
    dense = column.filter(present)
    chunked = pa.chunked_array([dense.slice(0, 4), dense.slice(4, 3), dense.slice(7)])
    for candidate, expected in ((dense.slice(2, 5), kept[2:7]), (chunked, kept)):
        got = to_arrays(candidate)
        assert [g.tolist() for g in got] == [e.tolist() for e in expected]
        assert all(g.dtype == np.float32 for g in got)


def test_to_arrays_fixed_size_lists_and_empty() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), 3).slice(1, 2)
    assert np.array_equal(np.stack(to_arrays(column)), matrix[1:3])
    assert to_arrays(pa.array([], type=pa.list_(pa.float32()))) == []


def test_to_arrays_refuses_nulls() -> None:
    with pytest.raises(ValueError, match="1 null entries"):
        to_arrays(to_list_array([np.ones(2), None]))
