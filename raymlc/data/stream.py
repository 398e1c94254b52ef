"""The training stream: which train rows fill which batch slot of an epoch, and reading one batch of them.

One plan serves every way of training. `EpochPlan.slots(epoch)` is a pure function of (seed, epoch): the
global batches of the epoch as train-split row positions, and one crop key per slot. W data-parallel
workers split every global batch into W equal parts (`worker_slots`), so the same config takes the same
optimizer steps on the same clips and crops at any worker count, and a resumed run rebuilds the stream of
its checkpoint's epoch exactly.

Uniform sampling (the default) visits every row once per epoch: the epoch's permutation, wrapped around
so that the last global batch is full (its first rows repeat at most `steps · batch_size − N` of them) or
cut short when `steps_per_epoch` asks for fewer steps. Balanced sampling draws with replacement.

A batch is read by a `ClipSource`: `ManifestClips` decodes only each slot's crop from its file (the
streaming path of every trainer), `MemoryClips` crops clips already in memory (the in-process benchmarks);
both place a crop by `raymlc.data.audio.crop_offset` of the slot's key, so they give the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlc.config import TaggerConfig, TrainConfig
from raymlc.data.audio import AudioError, Window, decode_audio, fit_window
from raymlc.data.dataset import SplitData, label_matrices
from raymlc.data.vocabulary import LabelVocabulary
from raymlc.flagging import FlagResult, flag_mask_for

MANIFEST_COLUMNS = (
    "clip_id",
    "audio",
    "start_s",
    "end_s",
    "features",
    "labels",
    "explicit_negatives",
    "removed_labels",
)


def class_balanced(owners: np.ndarray, classes: np.ndarray, n_rows: int) -> np.ndarray:
    """Sampling weight of each of `n_rows` rows holding labels `classes` (row `owners`): Σ over its labels of
    1 / (label frequency in these rows), normalized; a row without labels weighs as one label of the most
    frequent class."""
    frequency = np.bincount(classes).astype(np.float64)
    weights = np.bincount(owners, weights=1 / frequency[classes], minlength=n_rows)
    weights[weights == 0] = 1 / frequency.max() if frequency.any() else 1.0
    return weights / weights.sum()


def balanced_weights(labels: pa.ChunkedArray | pa.Array, vocabulary: LabelVocabulary) -> np.ndarray:
    """`class_balanced` weights of the rows of a manifest `labels` column."""
    labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    index = {name: i for i, name in enumerate(vocabulary.names)}
    classes = np.array([index[name] for name in pc.list_flatten(labels).to_pylist()], dtype=np.int64)
    return class_balanced(pc.list_parent_indices(labels).to_numpy(), classes, len(labels))


@dataclass(frozen=True)
class EpochPlan:
    """The batch slots of every epoch of one training run (see the module docstring)."""

    n_rows: int
    batch_size: int  # global
    steps: int  # optimizer steps per epoch
    seed: int
    weights: np.ndarray | None = None  # balanced sampling: P(row) per slot

    @classmethod
    def of(cls, config: TrainConfig, n_rows: int, weights: np.ndarray | None = None) -> EpochPlan:
        """The plan `config` asks for over `n_rows` train rows (`weights` for `sampler: balanced`)."""
        if n_rows < 1:
            raise ValueError("the train split is empty: nothing to train on")
        if config.sampler == "balanced" and weights is None:
            raise ValueError("train.sampler: balanced needs the rows' sampling weights")
        steps = config.steps_per_epoch or math.ceil(n_rows / config.batch_size)
        return cls(n_rows, config.batch_size, steps, config.seed, weights if config.sampler == "balanced" else None)

    def slots(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(row positions, crop keys), int64 [steps · batch_size] each, of `epoch` in slot order."""
        rng = np.random.default_rng([self.seed, epoch])
        n_slots = self.steps * self.batch_size
        if self.weights is None:
            rows = rng.permutation(self.n_rows)[np.arange(n_slots) % self.n_rows]
        else:
            rows = rng.choice(self.n_rows, size=n_slots, p=self.weights)
        return rows.astype(np.int64), rng.integers(0, 2**63 - 1, size=n_slots, dtype=np.int64)

    def worker_slots(self, epoch: int, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The slots of worker `rank` of `world_size`: its batch_size / world_size share of every global batch."""
        if self.batch_size % world_size:
            raise ValueError(f"batch size {self.batch_size} does not split into {world_size} equal worker batches")
        rows, keys = self.slots(epoch)
        share = self.batch_size // world_size
        take = slice(rank * share, (rank + 1) * share)
        return rows.reshape(self.steps, -1)[:, take].ravel(), keys.reshape(self.steps, -1)[:, take].ravel()


class ClipSource(Protocol):
    """Reads the model inputs, targets and loss mask of train rows `rows`, cropped by `keys`."""

    def read(self, rows: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]: ...


class ManifestClips:
    """The train rows of a manifest (in memory only as paths and labels), read a batch at a time.

    `read` decodes each slot's crop (audio) or takes its feature row, its targets (`label_source`'s labels)
    and its loss mask (0 at `flags`; a whole row 0 when its clip cannot be decoded, listed in `failed`).
    """

    def __init__(
        self,
        table: pa.Table,
        vocabulary: LabelVocabulary,
        config: TaggerConfig,
        label_source: str = "observed",
        flags: FlagResult | None = None,
    ) -> None:
        self.table = table.select([name for name in MANIFEST_COLUMNS if name in table.column_names])
        self.vocabulary, self.label_source, self.flags = vocabulary, label_source, flags
        self.is_audio, self.window = config.is_audio, config.window_samples
        self.sample_rate = config.frontend.sample_rate

    def __len__(self) -> int:
        return len(self.table)

    def read(self, rows: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.table.take(pa.array(rows, type=pa.int64()))
        targets, _, _ = label_matrices(batch, self.vocabulary, self.label_source)
        mask = np.ones_like(targets) if self.flags is None else (~flag_mask_for(rows, self.flags)).astype(np.float32)
        if not self.is_audio:
            column = batch.column("features").combine_chunks()
            inputs = column.values.to_numpy().reshape(len(batch), column.type.list_size).astype(np.float32)
            return {"inputs": inputs, "targets": targets, "mask": mask, "failed": np.zeros(len(rows), bool)}
        inputs = np.zeros((len(batch), self.window), np.float32)
        failed = np.zeros(len(batch), bool)
        for i, (row, key) in enumerate(zip(batch.to_pylist(), keys.tolist(), strict=True)):
            try:
                inputs[i] = decode_audio(
                    row["audio"],
                    clip_id=row["clip_id"],
                    sample_rate=self.sample_rate,
                    start_s=row["start_s"],
                    end_s=row["end_s"],
                    window=Window(self.window, self.sample_rate, key),
                )
            except AudioError:
                failed[i] = True  # the probe passed it, decoding did not: the row counts for nothing
        mask[failed] = 0
        return {"inputs": inputs, "targets": targets, "mask": mask, "failed": failed}


class MemoryClips:
    """A split already in memory (`SplitData`, with an optional [N, C] loss mask), read like `ManifestClips`."""

    def __init__(self, data: SplitData, window_samples: int | None, mask: np.ndarray | None = None) -> None:
        self.data, self.window, self.mask = data, window_samples, mask

    def __len__(self) -> int:
        return len(self.data)

    def read(self, rows: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        data = self.data
        if data.is_audio:
            pairs = zip(rows.tolist(), keys.tolist(), strict=True)
            inputs = np.stack([fit_window(data.inputs[row], self.window, key) for row, key in pairs])
        else:
            inputs = data.inputs[rows]
        targets = data.targets[rows]
        mask = np.ones_like(targets) if self.mask is None else self.mask[rows]
        return {"inputs": inputs, "targets": targets, "mask": mask, "failed": np.zeros(len(rows), bool)}
