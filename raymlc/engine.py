"""One training and evaluation loop in plain PyTorch: the unit that Ray Train wraps.

A split is loaded once into memory (`SplitData`): decoded waveforms (cropped to the model window at
batch time, randomly when training) or feature vectors, with multi-hot targets. Clip-level scores
are the max over a clip's windows of the per-window logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy.special import expit
from torch import nn

from raymlc.config import FrontEndConfig, TrainConfig
from raymlc.data import LabelVocabulary
from raymlc.data.audio import decode_clips, fit_window
from raymlc.inference import score_batch
from raymlc.losses import masked_bce, sigmoid_f1
from raymlc.metrics import summarize

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


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


def load_split(
    table: pa.Table,
    vocabulary: LabelVocabulary,
    split: str | None,
    frontend: FrontEndConfig | None,
    label_source: str = "observed",
) -> SplitData:
    """Rows of `split` (all rows when None) as a `SplitData`; `label_source="clean"` adds `removed_labels`."""
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    rows = table.select([c for c in ("clip_id", "audio", "start_s", "end_s") if c in table.column_names])
    rejects: list[dict] = []
    if "features" in table.column_names:
        column = table.column("features").combine_chunks()
        inputs: list[np.ndarray] | np.ndarray = (
            column.values.to_numpy().reshape(len(column), column.type.list_size).astype(np.float32)
        )
    else:
        if frontend is None:
            raise ValueError("an audio manifest needs a front-end config to decode at its sample rate")
        inputs, loaded, rejects = decode_clips(rows.to_pylist(), sample_rate=frontend.sample_rate)
        table = table.take(pa.array(loaded, type=pa.int64()))
    clip_ids = table.column("clip_id").to_pylist()
    labels = vocabulary.encode(table.column("labels").to_pylist(), clip_ids)
    removed = vocabulary.encode(table.column("removed_labels").to_pylist(), clip_ids)
    explicit = vocabulary.encode(table.column("explicit_negatives").to_pylist(), clip_ids)
    targets = np.maximum(labels, removed) if label_source == "clean" else labels
    return SplitData(clip_ids, inputs, targets, removed, explicit, rejects)


def make_loss(config: TrainConfig) -> LossFn:
    """The training loss a config names; both accept a 0/1 mask of entries that count."""
    if config.loss == "sigmoid_f1":
        return lambda logits, targets, mask: sigmoid_f1(
            logits, targets, beta=config.sigmoid_f1_beta, eta=config.sigmoid_f1_eta, mask=mask
        )
    return masked_bce


def iterate_batches(
    data: SplitData,
    batch_size: int,
    rng: np.random.Generator,
    window_samples: int | None,
    mask: np.ndarray | None = None,
    indices: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Shuffled training batches (inputs, targets, mask); waveforms are randomly cropped to the window."""
    order = rng.permutation(len(data) if indices is None else indices)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if data.is_audio:
            inputs = np.stack([fit_window(data.inputs[i], window_samples, rng) for i in batch])
        else:
            inputs = data.inputs[batch]
        batch_mask = None if mask is None else torch.from_numpy(mask[batch])
        yield torch.from_numpy(inputs), torch.from_numpy(data.targets[batch]), batch_mask


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
) -> float:
    """One pass over `batches`; returns the mean training loss."""
    model.train()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for inputs, targets, mask in batches:
        optimizer.zero_grad(set_to_none=True)
        mask = None if mask is None else mask.to(device)
        loss = loss_fn(model(inputs.to(device)).logits, targets.to(device), mask)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        count += 1
    return total / max(count, 1)


def predict(
    model: nn.Module, data: SplitData, batch_size: int, window_samples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-level logits [N, C] and embeddings [N, E] of a whole split (see `score_batch`)."""
    model.eval()
    window = window_samples if data.is_audio else None
    batches = [
        score_batch(model, data.inputs[start : start + batch_size], window) for start in range(0, len(data), batch_size)
    ]
    return torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy()


def evaluate(model: nn.Module, data: SplitData, batch_size: int, window_samples: int | None) -> dict:
    """Test metrics (mAP, d′, lwlrap, micro/macro F1 at 0.5) of `model` on `data`."""
    logits, _ = predict(model, data, batch_size, window_samples)
    return summarize(data.targets, expit(logits))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def cosine_lr(config: TrainConfig, epoch: int) -> float:
    """Learning rate of `epoch` (cosine decay to 5 % of the base rate)."""
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs)))


def fit(
    model: nn.Module,
    train: SplitData,
    val: SplitData | None,
    config: TrainConfig,
    window_samples: int | None,
    mask: np.ndarray | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train for `config.epochs`; after each epoch report {epoch, train_loss, val_map, seconds}."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = make_optimizer(model, config)
    loss_fn = make_loss(config)
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config, epoch)
        batches = iterate_batches(train, config.batch_size, rng, window_samples, mask)
        record = {"epoch": epoch + 1, "train_loss": train_epoch(model, optimizer, loss_fn, batches)}
        if val is not None and len(val):
            record["val_map"] = evaluate(model, val, config.eval_batch_size, window_samples)["map"]
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history
