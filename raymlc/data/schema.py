"""The one normalized Arrow schema every manifest reader produces."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

LABEL_LIST = pa.list_(pa.string())

# Column name -> Arrow type of the optional columns (filled with nulls/empty lists when absent).
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    "audio": pa.string(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "explicit_negatives": LABEL_LIST,
    "removed_labels": LABEL_LIST,
    "split": pa.string(),
}
LABEL_COLUMNS = ("labels", "explicit_negatives", "removed_labels")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the source, the row and the reason."""


def features_type(dim: int) -> pa.DataType:
    """Arrow type of the `features` column: a fixed-size list of float32."""
    return pa.list_(pa.float32(), dim)


def _empty_lists(n: int) -> pa.Array:
    return pa.array([[] for _ in range(n)], type=LABEL_LIST)


def _label_column(table: pa.Table, name: str, source: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    if column.type != LABEL_LIST:
        try:
            column = column.cast(LABEL_LIST)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ManifestError(f"{source}: column {name!r} must be a list of label names ({error})") from None
    # A null list means "no labels", never "unknown".
    return pc.if_else(pc.is_null(column), _empty_lists(len(column)), column)


def _features_column(table: pa.Table, source: str) -> pa.Array:
    column = table.column("features").combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int((lengths != lengths[0]).argmax())
            raise ManifestError(
                f"{source}: row {row}: features has {lengths[row]} values, expected {lengths[0]} like row 0"
            )
        dim = int(lengths[0]) if len(lengths) else 0
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise ManifestError(f"{source}: row {row}: features is missing")
    return column.cast(features_type(dim))


def normalize_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Validate `table` and return it in the normalized manifest schema.

    Required: `clip_id` (unique, non-empty), `labels`, and either `audio` or `features`.
    Optional columns are added when absent; extra columns are kept after the known ones.
    """
    for required in ("clip_id", "labels"):
        if required not in table.column_names:
            raise ManifestError(f"{source}: missing column {required!r} (columns: {table.column_names})")
    if "audio" not in table.column_names and "features" not in table.column_names:
        raise ManifestError(f"{source}: needs an 'audio' or a 'features' column (columns: {table.column_names})")

    clip_ids = table.column("clip_id").cast(pa.string()).combine_chunks()
    ids = clip_ids.to_pylist()
    seen: dict[str, int] = {}
    for row, clip_id in enumerate(ids):
        if not clip_id:
            raise ManifestError(f"{source}: row {row}: clip_id is empty")
        if clip_id in seen:
            raise ManifestError(f"{source}: row {row}: duplicate clip_id {clip_id!r} (first at row {seen[clip_id]})")
        seen[clip_id] = row

    n = table.num_rows
    columns: dict[str, pa.Array] = {"clip_id": clip_ids}
    for name, dtype in OPTIONAL_COLUMNS.items():
        if name in LABEL_COLUMNS:
            columns[name] = _label_column(table, name, source) if name in table.column_names else _empty_lists(n)
        elif name in table.column_names:
            columns[name] = table.column(name).cast(dtype).combine_chunks()
        else:
            columns[name] = pa.nulls(n, type=dtype)
    columns["labels"] = _label_column(table, "labels", source)
    if "features" in table.column_names:
        columns["features"] = _features_column(table, source)
    if "audio" in table.column_names and "features" not in table.column_names:
        missing = pc.is_null(columns["audio"]).to_numpy(zero_copy_only=False)
        if missing.any():
            raise ManifestError(f"{source}: row {int(missing.argmax())}: audio path is missing")

    order = ["clip_id", "audio", "start_s", "end_s", "features", "labels", *LABEL_COLUMNS[1:], "split"]
    names = [name for name in order if name in columns]
    extras = [name for name in table.column_names if name not in columns]
    return pa.table([columns[name] for name in names] + [table.column(name) for name in extras], names=names + extras)
