"""A configured manifest in memory: the table with its splits, and each split's model inputs and label matrices.

`load_manifest_table` reads the manifest (and the test manifest) of a `TaggerConfig` and assigns missing
splits; `load_split` turns one split into a `SplitData` (decoded waveforms or feature rows, multi-hot
targets); `load_dataset` does all three splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymlc.config import TaggerConfig
from raymlc.data.audio import AudioError, decode_clips, probe_audio
from raymlc.data.manifest import read_manifest
from raymlc.data.schema import ManifestError
from raymlc.data.splits import assign_splits
from raymlc.data.vocabulary import LabelVocabulary

SPLITS = ("train", "val", "test")
REJECTS = "rejects.parquet"
REJECTS_SCHEMA = pa.schema([(name, pa.string()) for name in ("clip_id", "audio", "reason", "split")])


@dataclass
class SplitData:
    """One split in memory: model inputs, multi-hot label matrices and the clips that failed to load."""

    clip_ids: list[str]
    inputs: list[np.ndarray] | np.ndarray  # waveforms (one 1-D array per clip) or features [N, D]
    targets: np.ndarray  # [N, C] float32, the labels trained/evaluated on
    removed: np.ndarray  # [N, C] float32, `removed_labels` (all zero when not recorded)
    explicit_negatives: np.ndarray  # [N, C] float32
    rejects: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def is_audio(self) -> bool:
        return isinstance(self.inputs, list)

    @property
    def feature_dim(self) -> int | None:
        return None if self.is_audio else int(self.inputs.shape[1])

    def take(self, rows: np.ndarray) -> SplitData:
        """The clips at positions `rows`, in that order (rejects are not carried over)."""
        inputs = [self.inputs[i] for i in rows] if self.is_audio else self.inputs[rows]
        return SplitData(
            [self.clip_ids[i] for i in rows],
            inputs,
            self.targets[rows],
            self.removed[rows],
            self.explicit_negatives[rows],
        )


@dataclass
class Dataset:
    """A manifest split three ways, with its label vocabulary."""

    vocabulary: LabelVocabulary
    train: SplitData
    val: SplitData
    test: SplitData

    @property
    def rejects(self) -> list[dict]:
        return self.train.rejects + self.val.rejects + self.test.rejects


def load_manifest_table(config: TaggerConfig) -> pa.Table:
    """The configured manifest with every row assigned to train/val/test."""
    data = config.data
    table = read_manifest(data.manifest, format=data.format, audio_root=data.audio_root, **data.options)
    test_fraction = data.test_fraction
    if data.test_manifest:
        test = read_manifest(data.test_manifest, format=data.format, audio_root=data.audio_root, **data.options)
        test = test.set_column(test.schema.get_field_index("split"), "split", pa.array(["test"] * len(test)))
        table = pa.concat_tables([table, test], promote_options="permissive")
        test_fraction = 0.0
    if pc.any(pc.is_null(table.column("split"))).as_py():
        vocabulary = LabelVocabulary.from_table(table)
        table = assign_splits(table, vocabulary, data.val_fraction, test_fraction, data.split_seed)
    return table


def label_matrices(
    table: pa.Table, vocabulary: LabelVocabulary, label_source: str = "observed"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, removed, explicit negatives) float32 [N, C] of `table`'s rows; `label_source="clean"` trains
    on `labels` ∪ `removed_labels`."""
    clip_ids = table.column("clip_id").to_pylist()
    labels = vocabulary.encode(table.column("labels").to_pylist(), clip_ids)
    removed = vocabulary.encode(table.column("removed_labels").to_pylist(), clip_ids)
    explicit = vocabulary.encode(table.column("explicit_negatives").to_pylist(), clip_ids)
    return (np.maximum(labels, removed) if label_source == "clean" else labels), removed, explicit


def feature_matrix(table: pa.Table) -> np.ndarray:
    """The `features` column as float32 [N, D]."""
    column = table.column("features").combine_chunks()
    return column.values.to_numpy().reshape(len(column), column.type.list_size).astype(np.float32)


def probe_rows(rows: pa.Table) -> list[dict]:
    """{"clip_id", "audio", "reason"} of each row whose clip cannot be opened (`probe_audio`: headers only)."""
    records = rows.select(["clip_id", "audio", "start_s", "end_s"]).to_pylist()

    def reason(row: dict) -> str | None:
        try:
            probe_audio(row["audio"], clip_id=row["clip_id"], start_s=row["start_s"], end_s=row["end_s"])
        except AudioError as error:
            return error.reason
        return None

    with ThreadPoolExecutor(8) as pool:  # opening files is I/O: threads overlap it
        reasons = list(pool.map(reason, records))
    return [
        {"clip_id": row["clip_id"], "audio": row["audio"], "reason": why}
        for row, why in zip(records, reasons, strict=True)
        if why is not None
    ]


def readable_rows(
    table: pa.Table, config: TaggerConfig, probe: Callable[[pa.Table], list[dict]] = probe_rows
) -> tuple[pa.Table, list[dict]]:
    """`table` without the clips that cannot be opened, and those rejects (with their `split`), checked
    before any training: an empty train or val split, or one in which more than
    `data.max_reject_fraction` of the clips cannot be opened, is a `ManifestError` naming the split, the
    count and the first clips with their reasons. `probe` finds the rejects of some rows (Ray Data passes
    its own, over the cluster); feature manifests have nothing to open."""
    rejects: list[dict] = []
    for split in SPLITS:
        rows = table.filter(pc.equal(table.column("split"), split))
        if split != "test" and not len(rows):
            raise ManifestError(f"{config.data.manifest}: the {split} split is empty")
        found = probe(rows) if config.is_audio and len(rows) else []
        limit = config.data.max_reject_fraction
        if len(found) > limit * len(rows):
            first = "; ".join(f"{r['clip_id']} ({r['reason']})" for r in found[:5])
            raise ManifestError(
                f"{config.data.manifest}: {len(found)} of the {len(rows)} clips of the {split} split "
                f"({len(found) / len(rows):.1%}) cannot be read, more than data.max_reject_fraction = {limit:g}; "
                f"first: {first}"
            )
        rejects += [reject | {"split": split} for reject in found]
    rejected = pa.array([r["clip_id"] for r in rejects], type=pa.string())
    return table.filter(pc.invert(pc.is_in(table.column("clip_id"), rejected))), rejects


def write_rejects(path: os.PathLike | str, rejects: list[dict]) -> None:
    """The clips left out of a run because they cannot be read: clip_id, audio, reason, split."""
    pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), path)


def load_split(
    table: pa.Table,
    vocabulary: LabelVocabulary,
    split: str | None,
    config: TaggerConfig,
    label_source: str = "observed",
    decode: bool = True,
) -> SplitData:
    """Rows of `split` (all rows when None) as a `SplitData`: waveforms decoded at the front end's rate for
    audio models (`config.is_audio`), feature rows otherwise; clips that cannot be decoded go to `rejects`.
    With `decode=False` only the label matrices (nothing decoded; inputs of shape [N, 0])."""
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    if not decode:
        targets, removed, explicit = label_matrices(table, vocabulary, label_source)
        no_inputs = np.zeros((len(table), 0), np.float32)
        return SplitData(table.column("clip_id").to_pylist(), no_inputs, targets, removed, explicit)
    needed = "audio" if config.is_audio else "features"
    # A normalized manifest always has an `audio` column: all null when the manifest holds features.
    if needed not in table.column_names or (len(table) and table.column(needed).null_count == len(table)):
        raise ManifestError(
            f"{config.data.manifest}: a {config.model.kind} model needs a manifest with a {needed!r} column"
        )
    rejects: list[dict] = []
    if config.is_audio:
        rows = table.select([c for c in ("clip_id", "audio", "start_s", "end_s") if c in table.column_names])
        inputs, loaded, rejects = decode_clips(rows.to_pylist(), sample_rate=config.frontend.sample_rate)
        table = table.take(pa.array(loaded, type=pa.int64()))
    else:
        inputs = feature_matrix(table)
    targets, removed, explicit = label_matrices(table, vocabulary, label_source)
    return SplitData(table.column("clip_id").to_pylist(), inputs, targets, removed, explicit, rejects)


def load_dataset(config: TaggerConfig, decode: bool = True) -> Dataset:
    """Every split of the configured manifest, trained on `config.data.label_source`'s labels (see `load_split`
    for `decode`)."""
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    splits = [load_split(table, vocabulary, name, config, config.data.label_source, decode) for name in SPLITS]
    return Dataset(vocabulary, *splits)
