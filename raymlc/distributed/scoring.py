"""Ray Data scoring: stream a manifest through an autoscaling pool of actors that decode and score, write Parquet.

Decoding runs in the scoring actors, not in tasks of its own: on CPU workers a separate decode stage only
moves every waveform through the object store and starts a second set of worker processes
(`bench/score_throughput.py` measured 72 clips/s that way against 85 fused, 2,400 clips on 2 cores).

Output rows: `row_index` (position in the manifest), `clip_id`, the label columns passed through,
`scores` (teacher probabilities, fixed-size list over the vocabulary), optionally `embedding`, and
`error` (null, or why the clip could not be decoded; such rows carry no scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from raymlc.checkpoint import load_checkpoint, read_config
from raymlc.config import ScoringConfig
from raymlc.data.audio import decode_clips
from raymlc.data.float_lists import to_arrays, to_list_array
from raymlc.scoring import score_batch

PASS_THROUGH = ("row_index", "clip_id", "labels", "explicit_negatives", "removed_labels")


def _decode_rows(batch: pa.Table, sample_rate: int) -> tuple[list[np.ndarray | None], pa.Array]:
    """Each row's waveform (None where it could not be decoded) and the `error` column (null, or why)."""
    rows = batch.select(["clip_id", "audio", "start_s", "end_s"]).to_pylist()
    waves, loaded, rejects = decode_clips(rows, sample_rate=sample_rate)
    waveform: list[np.ndarray | None] = [None] * len(batch)
    for position, wave in zip(loaded, waves, strict=True):
        waveform[position] = wave
    reasons = {reject["clip_id"]: reject["reason"] for reject in rejects}
    errors = [reasons.get(row["clip_id"]) for row in rows]
    return waveform, pa.array(errors, type=pa.string())


def decode_batch(batch: pa.Table, sample_rate: int) -> pa.Table:
    """Decode a batch of manifest rows; failed clips keep their row with `error` set and no waveform."""
    waveform, errors = _decode_rows(batch, sample_rate)
    columns = {name: batch.column(name) for name in PASS_THROUGH}
    columns["waveform"] = to_list_array(waveform)
    columns["error"] = errors
    return pa.table(columns)


class BatchScorer:
    """A Ray Data actor holding the model: decodes and scores manifest rows (audio clips or feature rows)."""

    def __init__(self, checkpoint: str, torch_threads: int, with_embedding: bool) -> None:
        torch.set_num_threads(torch_threads)
        self.model, config, self.vocabulary = load_checkpoint(Path(checkpoint))
        self.model.eval()
        self.is_audio, self.window = config.is_audio, config.window_samples
        self.sample_rate = config.frontend.sample_rate
        self.embedding_dim = config.model.embedding_dim
        self.with_embedding = with_embedding

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.is_audio:
            waveform, errors = _decode_rows(batch, self.sample_rate)
            ok = pc.is_null(errors).to_numpy(zero_copy_only=False)
            inputs = [wave for wave in waveform if wave is not None]
        else:
            errors = batch["error"]
            ok = pc.is_null(errors).to_numpy(zero_copy_only=False)
            inputs = to_arrays(batch["features"].filter(pa.array(ok)))
        scores = np.zeros((len(batch), len(self.vocabulary)), np.float32)
        embeddings = np.zeros((len(batch), self.embedding_dim), np.float32)
        if inputs:
            logits, embedding = score_batch(self.model, inputs, self.window)
            scores[ok], embeddings[ok] = torch.sigmoid(logits).numpy(), embedding.numpy()
        columns = {name: batch[name] for name in PASS_THROUGH}
        columns["scores"] = _fixed_size(scores, ok)
        if self.with_embedding:
            columns["embedding"] = _fixed_size(embeddings, ok)
        columns["error"] = errors
        return pa.table(columns)


def _fixed_size(matrix: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Rows of `matrix` as a fixed-size float32 list column, null where `valid` is False."""
    values = pa.array(np.ascontiguousarray(matrix, np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=pa.array(~valid))


def score_manifest(
    table: pa.Table,
    checkpoint: str,
    output_dir: Path,
    config: ScoringConfig,
) -> Path:
    """Score every row of `table` with the checkpoint's model (its waveforms for audio models, its feature rows
    otherwise); writes `output_dir/*.parquet`, returns it.

    `row_index` is the row's position in `table`, unless `table` already has a `row_index` column.
    """
    if "row_index" not in table.column_names:
        table = table.append_column("row_index", pa.array(np.arange(len(table), dtype=np.int64)))
    is_audio = read_config(Path(checkpoint)).is_audio
    if not is_audio:
        table = table.append_column("error", pa.nulls(len(table), pa.string()))
    keep = [*PASS_THROUGH, *(("audio", "start_s", "end_s") if is_audio else ("features", "error"))]
    table = table.select(keep)
    # One block per model batch: an actor takes whole blocks, so one big block would keep the others idle.
    dataset = ray.data.from_arrow(
        [table.slice(start, config.batch_size) for start in range(0, len(table), config.batch_size)]
    )
    scored = dataset.map_batches(
        BatchScorer,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "torch_threads": 1,
            "with_embedding": config.write_embeddings,
        },
        batch_format="pyarrow",
        batch_size=config.batch_size,
        compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
        num_cpus=config.cpus_per_actor,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    scored.write_parquet(str(output_dir.resolve()), mode="overwrite")
    return output_dir


def read_rejects(scores_dir: Path) -> pa.Table:
    """The rows the scorer could not decode: clip_id and the reason."""
    table = pq.read_table(scores_dir, columns=["row_index", "clip_id", "error"])
    return (
        table.filter(pc.is_valid(table["error"]))
        .sort_by("row_index")
        .rename_columns(["row_index", "clip_id", "reason"])
    )
