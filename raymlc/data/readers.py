"""Manifest readers for Parquet, generic CSV, AudioSet segment lists and FSD50K ground-truth CSVs.

CSV readers name rows by their 1-based line in the file (the header is line 1).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from raymlc.data.files import open_text, resolve, sibling
from raymlc.data.schema import LABEL_COLUMNS, ManifestError, normalize_manifest
from raymlc.data.vocabulary import declare_labels, declared_labels

CSV_LIST_SEPARATOR = ";"
FSD50K_SPLITS = ("train", "val", "test")


def read_parquet(path: str) -> pa.Table:
    """A Parquet file (or folder of them) already in the manifest schema; declared labels are kept."""
    filesystem, inner_path = resolve(path)
    table = pq.read_table(inner_path, filesystem=filesystem)
    declared = declared_labels(table)
    table = normalize_manifest(table, source=path)
    return table if declared is None else declare_labels(table, declared)


def read_csv(path: str) -> pa.Table:
    """A CSV file with a header row and the manifest columns (`clip_id`, `labels`, `audio`, ... ).

    List columns (`labels`, `explicit_negatives`, `removed_labels`) hold label names separated by `;`
    (names may contain commas, e.g. AudioSet's "Male speech, man speaking"); spaces around a name are
    dropped and an empty cell means no labels. `start_s`/`end_s` are numbers; an empty cell in them or in
    `audio`/`split` is null. Audio paths are kept as written (`read_manifest` resolves relative ones).
    Other columns are kept as strings.
    `features` is not supported in CSV: use Parquet.
    """
    header, records = _csv_records(path, required=("clip_id", "labels"))
    if "features" in header:
        raise ManifestError(f"{path}: a 'features' column is not supported in CSV manifests; use Parquet")
    _check_ids([record["clip_id"] for _, record in records], [line for line, _ in records], path)
    columns: dict[str, list] = {}
    for name in header:
        cells = [(line, record[name]) for line, record in records]
        if name in LABEL_COLUMNS:
            columns[name] = [_split_names(cell, CSV_LIST_SEPARATOR) for _, cell in cells]
        elif name in ("start_s", "end_s"):
            columns[name] = [_seconds(cell, name, line, path) for line, cell in cells]
        elif name in ("audio", "split"):
            columns[name] = [cell or None for _, cell in cells]
        else:
            columns[name] = [cell for _, cell in cells]
    return normalize_manifest(pa.table(columns), source=path)


def read_audioset(path: str, class_index: str | None = None) -> pa.Table:
    """An AudioSet segment list (`YTID, start_seconds, end_seconds, "mid,mid,..."`, `#` comment lines).

    `class_index` is `class_labels_indices.csv` (`index,mid,display_name`; default: the one beside `path`);
    labels are display names and the vocabulary order is the class index order. `clip_id` is
    `"{YTID}_{start:.3f}"`; `audio` is the relative path `"{YTID}.flac"` (`read_manifest` resolves it
    against `audio_root` or the list's folder); `start_s`/`end_s` are the segment's times in the video.
    """
    class_index = class_index or sibling(path, "class_labels_indices.csv")
    display_names = _audioset_classes(class_index)
    columns: dict[str, list] = {name: [] for name in ("clip_id", "audio", "start_s", "end_s", "labels")}
    lines: list[int] = []
    for line, text in enumerate(open_text(path).splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([text], skipinitialspace=True))
        if len(fields) != 4:
            raise ManifestError(f"{path}: line {line}: expected YTID, start, end and labels, got {fields}")
        ytid, start, end, mid_list = fields
        mids = _split_names(mid_list, ",")
        unknown = [mid for mid in mids if mid not in display_names]
        if unknown:
            raise ManifestError(f"{path}: line {line} (YTID {ytid!r}): MIDs {unknown} not in {class_index}")
        start_s = _number(start, "start_seconds", line, path)
        columns["clip_id"].append(f"{ytid}_{start_s:.3f}")
        columns["audio"].append(f"{ytid}.flac")
        columns["start_s"].append(start_s)
        columns["end_s"].append(_number(end, "end_seconds", line, path))
        columns["labels"].append([display_names[mid] for mid in mids])
        lines.append(line)
    _check_ids(columns["clip_id"], lines, path)
    return declare_labels(normalize_manifest(pa.table(columns), source=path), list(display_names.values()))


def _audioset_classes(path: str) -> dict[str, str]:
    """MID -> display name of an AudioSet class index CSV, in file (= index) order; both must be unique."""
    _, records = _csv_records(path, required=("mid", "display_name"))
    display_names: dict[str, str] = {}
    for line, record in records:
        if record["mid"] in display_names or record["display_name"] in display_names.values():
            raise ManifestError(f"{path}: line {line}: duplicate MID or display name {record}")
        display_names[record["mid"]] = record["display_name"]
    return display_names


def read_fsd50k(path: str) -> pa.Table:
    """An FSD50K ground-truth CSV (`fname,labels,mids[,split]`; labels comma-separated in one quoted cell).

    `clip_id` is `fname`; `audio` is the relative path `"{fname}.wav"` (resolved by `read_manifest`);
    `split` (train/val/test) is kept when present, `mids` is ignored.
    """
    header, records = _csv_records(path, required=("fname", "labels"))
    _check_ids([record["fname"] for _, record in records], [line for line, _ in records], path)
    columns: dict[str, list] = {
        "clip_id": [record["fname"] for _, record in records],
        "audio": [f"{record['fname']}.wav" for _, record in records],
        "labels": [_split_names(record["labels"], ",") for _, record in records],
    }
    if "split" in header:
        for line, record in records:
            if record["split"] and record["split"] not in FSD50K_SPLITS:
                raise ManifestError(f"{path}: line {line}: split {record['split']!r} not in {FSD50K_SPLITS}")
        columns["split"] = [record["split"] or None for _, record in records]
    return normalize_manifest(pa.table(columns), source=path)


def _csv_records(path: str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (1-based line, record) pairs of a CSV with a header row; checks columns and field counts."""
    reader = csv.DictReader(io.StringIO(open_text(path), newline=""))
    header = list(reader.fieldnames or [])
    missing = [name for name in required if name not in header]
    if missing:
        raise ManifestError(f"{path}: line 1: missing columns {missing} (header: {header})")
    return header, list(_checked_records(reader, len(header), path))


def _checked_records(reader: csv.DictReader, width: int, path: str) -> Iterator[tuple[int, dict[str, str]]]:
    for record in reader:
        if None in record or None in record.values():
            raise ManifestError(f"{path}: line {reader.line_num}: expected {width} fields")
        yield reader.line_num, record


def _check_ids(ids: Sequence[str], lines: Sequence[int], source: str) -> None:
    """Clip ids must be non-empty and unique; errors name the 1-based lines."""
    first_line: dict[str, int] = {}
    for clip_id, line in zip(ids, lines, strict=True):
        if not clip_id:
            raise ManifestError(f"{source}: line {line}: empty clip id")
        if clip_id in first_line:
            first = first_line[clip_id]
            raise ManifestError(f"{source}: line {line}: duplicate clip id {clip_id!r} (first: line {first})")
        first_line[clip_id] = line


def _split_names(cell: str, separator: str) -> list[str]:
    return [name.strip() for name in cell.split(separator) if name.strip()]


def _seconds(cell: str, column: str, line: int, source: str) -> float | None:
    """A time in seconds, or None for an empty cell."""
    return _number(cell, column, line, source) if cell.strip() else None


def _number(cell: str, column: str, line: int, source: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise ManifestError(f"{source}: line {line}: {column} {cell!r} is not a number") from None
