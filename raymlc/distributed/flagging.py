"""Ray Data flagging over teacher scores: per-block counts and partial top-k, merged on the driver.

The driver only ever holds per-class counts and the Σ k_c selected candidates, never the N x C
score matrix. The `FlagResult` is what the run keeps (`raymlc.flagging.save_flags`); the enhanced labels
(`row_index`, `clip_id`, `labels`, `flagged` label names, `removed_labels`) are its human-readable table.
The `*_local` functions do the same in this process, block by block, without Ray Data.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import ray

from raymlc.config import FlaggingConfig
from raymlc.data import LabelVocabulary
from raymlc.flagging import (
    FlagResult,
    TopKFlagger,
    flag_budget,
    flag_mask_for,
    implicit_negative_counts,
    random_scores,
)
from raymlc.metrics import flag_counts

FLAG_COLUMNS = ["row_index", "clip_id", "labels", "flagged", "removed_labels"]


def _labels(batch: pa.Table, vocabulary: LabelVocabulary) -> tuple[np.ndarray, np.ndarray]:
    ids = batch["clip_id"].to_pylist()
    positives = vocabulary.encode(batch["labels"].to_pylist(), ids).astype(bool)
    explicit = vocabulary.encode(batch["explicit_negatives"].to_pylist(), ids).astype(bool)
    return positives, explicit


def _scores(batch: pa.Table, n_classes: int) -> np.ndarray:
    return batch["scores"].combine_chunks().values.to_numpy().reshape(len(batch), n_classes)


def _scored_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["error"]))


def read_scored(scores_dir: Path) -> ray.data.Dataset:
    """The scores table's rows that have scores (rejected clips dropped)."""
    return ray.data.read_parquet(str(scores_dir.resolve())).map_batches(_scored_rows, batch_format="pyarrow")


def _count_block(batch: pa.Table, vocabulary: LabelVocabulary) -> pa.Table:
    counts = implicit_negative_counts(*_labels(batch, vocabulary))
    return pa.table({"counts": [counts.tolist()]})


def _partial_top_k(
    batch: pa.Table, vocabulary: LabelVocabulary, budget: np.ndarray, random_seed: int | None
) -> pa.Table:
    rows = batch["row_index"].to_numpy()
    scores = (
        _scores(batch, len(vocabulary)) if random_seed is None else random_scores(rows, len(vocabulary), random_seed)
    )
    flagger = TopKFlagger(budget)
    flagger.update(rows, scores, *_labels(batch, vocabulary))
    return pa.table({"flagger": [pickle.dumps(flagger)]})


def _enhanced_labels(batch: pa.Table, vocabulary: LabelVocabulary, result: FlagResult) -> pa.Table:
    mask = flag_mask_for(batch["row_index"].to_numpy(), result)
    flagged = [[vocabulary.names[c] for c in np.flatnonzero(row)] for row in mask]
    return pa.table(
        {
            "row_index": batch["row_index"],
            "clip_id": batch["clip_id"],
            "labels": batch["labels"],
            "flagged": pa.array(flagged, type=pa.list_(pa.string())),
            "removed_labels": batch["removed_labels"],
        }
    )


def select_flags(
    scores_dir: Path, vocabulary: LabelVocabulary, config: FlaggingConfig, random_seed: int | None = None
) -> FlagResult:
    """Per class, the top `percent` % (or `top_k`) implicit negatives of the scored train clips.

    With `random_seed`, the same per-class counts are drawn uniformly at random (the control).
    """
    scored = ray.data.read_parquet(str(scores_dir.resolve())).map_batches(_scored_rows, batch_format="pyarrow")
    count_rows = scored.map_batches(_count_block, fn_kwargs={"vocabulary": vocabulary}, batch_format="pyarrow")
    counts = np.zeros(len(vocabulary), np.int64)
    for row in count_rows.iter_rows():
        counts += np.asarray(row["counts"], np.int64)
    budget = flag_budget(counts, percent=config.percent, top_k=config.top_k)
    partials = scored.map_batches(
        _partial_top_k,
        fn_kwargs={"vocabulary": vocabulary, "budget": budget, "random_seed": random_seed},
        batch_format="pyarrow",
    )
    flagger = TopKFlagger(budget)
    for row in partials.iter_rows():
        flagger.merge(pickle.loads(row["flagger"]))
    return flagger.result()


def write_enhanced_labels(scores_dir: Path, vocabulary: LabelVocabulary, result: FlagResult, output_dir: Path) -> Path:
    """Write `clip_id, labels, flagged, removed_labels` for every scored clip to `output_dir`."""
    scored = ray.data.read_parquet(str(scores_dir.resolve())).map_batches(_scored_rows, batch_format="pyarrow")
    enhanced = scored.map_batches(
        _enhanced_labels,
        fn_kwargs={"vocabulary": vocabulary, "result": result},
        batch_format="pyarrow",
    )
    enhanced.write_parquet(str(output_dir.resolve()), mode="overwrite")
    return output_dir


def flag_counts_local(scores_dir: Path, vocabulary: LabelVocabulary, result: FlagResult) -> np.ndarray:
    """`raymlc.metrics.flag_counts` of the flags against `removed_labels`, summed over the scored clips block
    by block in this process (memory O(block))."""
    counts = np.zeros((3, len(vocabulary)), np.int64)
    for block in _scored_blocks(scores_dir):
        ids = block["clip_id"].to_pylist()
        removed = vocabulary.encode(block["removed_labels"].to_pylist(), ids)
        counts += flag_counts(flag_mask_for(block["row_index"].to_numpy(), result), removed)
    return counts


def _scored_blocks(scores_dir: Path):
    """The scored rows of the scores table, one file block at a time, read in this process."""
    for batch in ds.dataset(scores_dir, format="parquet").to_batches():
        yield _scored_rows(pa.Table.from_batches([batch]))


def select_flags_local(scores_dir: Path, vocabulary: LabelVocabulary, config: FlaggingConfig) -> FlagResult:
    """`select_flags` in this process without Ray Data, streaming the scores block by block (memory
    O(Σ k_c)): for callers inside a Tune trial, whose placement group has no CPU for Ray Data tasks."""
    counts = np.zeros(len(vocabulary), np.int64)
    for block in _scored_blocks(scores_dir):
        counts += implicit_negative_counts(*_labels(block, vocabulary))
    flagger = TopKFlagger(flag_budget(counts, percent=config.percent, top_k=config.top_k))
    for block in _scored_blocks(scores_dir):
        flagger.update(block["row_index"].to_numpy(), _scores(block, len(vocabulary)), *_labels(block, vocabulary))
    return flagger.result()
