"""One training loop in plain PyTorch, the unit that Ray Train wraps, and single-process training (`train_local`).

Batches come from the training stream (`raymlc.data.stream`): an epoch plan of global batches and a clip
source that reads them. In one process `read_ahead` reads them in a thread ahead of the step; Ray Train
workers read their share through Ray tasks (`raymlc.distributed.training`). `train_local` trains on the
train split, evaluates on val and test, fits the adaptive thresholds on the frozen model and writes
`checkpoint.pt`, `metrics.json`, `rejects.parquet` and the tagger bundle.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from torch import nn

from raymlc.bundle import export_bundle
from raymlc.checkpoint import CHECKPOINT, save_checkpoint
from raymlc.config import TaggerConfig, TrainConfig
from raymlc.data.dataset import (
    REJECTS,
    SplitData,
    feature_matrix,
    load_manifest_table,
    load_split,
    readable_rows,
    write_rejects,
)
from raymlc.data.files import write_json
from raymlc.data.stream import ClipSource, EpochPlan, ManifestClips, balanced_weights
from raymlc.data.vocabulary import LabelVocabulary
from raymlc.losses import masked_bce, sigmoid_f1
from raymlc.models import FeatureMLP, build_model
from raymlc.scoring import METRICS, evaluate
from raymlc.thresholds import adaptive_f1, fit_tagger_thresholds

BUNDLE = "bundle"
BATCH_KEYS = ("inputs", "targets", "mask")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def new_model(config: TaggerConfig, n_classes: int, features: np.ndarray | None = None) -> nn.Module:
    """A freshly initialized tagger for `config` (an MLP standardized with the train split's `features`)."""
    model = build_model(config.model, config.frontend, n_classes, None if features is None else features.shape[1])
    if isinstance(model, FeatureMLP):
        model.set_standardization(torch.from_numpy(features))
    return model


def make_loss(config: TrainConfig) -> LossFn:
    """The training loss a config names; both accept a 0/1 mask of entries that count."""
    if config.loss == "sigmoid_f1":
        return lambda logits, targets, mask: sigmoid_f1(
            logits, targets, beta=config.sigmoid_f1_beta, eta=config.sigmoid_f1_eta, mask=mask
        )
    return masked_bce


def read_ahead(
    source: ClipSource, rows: np.ndarray, keys: np.ndarray, batch_size: int, depth: int = 2
) -> Iterator[dict[str, np.ndarray]]:
    """`source`'s batches of `batch_size` consecutive slots, read `depth` batches ahead in a thread (decoding
    releases the GIL), so that the training step does not wait for it."""
    with ThreadPoolExecutor(1) as pool:
        pending: deque[Future] = deque()
        for start in range(0, len(rows), batch_size):
            pending.append(pool.submit(source.read, rows[start : start + batch_size], keys[start : start + batch_size]))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Stepper:
    """Optimizer steps on batches: the loss, mixed precision (`train.precision`) and the device."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, make_loss(config)
        self.device = next(model.parameters()).device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")

    def epoch(self, batches: Iterable[dict[str, np.ndarray | torch.Tensor]]) -> float:
        """One pass over `batches`; returns the mean training loss."""
        self.model.train()
        total, count = 0.0, 0
        for batch in batches:
            inputs, targets, mask = (torch.as_tensor(batch[key]).to(self.device) for key in BATCH_KEYS)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(inputs).logits
            loss = self.loss_fn(logits.float(), targets, mask)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach())
            count += 1
        return total / max(count, 1)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def cosine_lr(config: TrainConfig, epoch: int) -> float:
    """Learning rate of `epoch` (cosine decay to 5 % of the base rate)."""
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs)))


def fit(
    model: nn.Module,
    source: ClipSource,
    plan: EpochPlan,
    val: SplitData | None,
    config: TrainConfig,
    window_samples: int | None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train for `config.epochs` on `plan`'s batches of `source` (one process: every global batch whole);
    after each epoch report {epoch, train_loss, train_seconds, val_map, seconds (with evaluation)}."""
    optimizer = make_optimizer(model, config)
    stepper = Stepper(model, optimizer, config)
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config, epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout and SpecAugment: seeded per epoch
        rows, keys = plan.slots(epoch)
        record = {"epoch": epoch + 1, "train_loss": stepper.epoch(read_ahead(source, rows, keys, plan.batch_size))}
        record["train_seconds"] = time.perf_counter() - started
        if val is not None and len(val):
            record["val_map"] = evaluate(model, val, config.eval_batch_size, window_samples)["map"]
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history


def train_plan(config: TaggerConfig, train_rows: pa.Table, vocabulary: LabelVocabulary) -> EpochPlan:
    """The epoch plan of training `config` on `train_rows` (class-balanced weights from their labels)."""
    balanced = config.train.sampler == "balanced"
    weights = balanced_weights(train_rows.column("labels"), vocabulary) if balanced else None
    return EpochPlan.of(config.train, len(train_rows), weights)


def train_local(config: TaggerConfig, output: Path, log: Callable[[str], None] = print) -> dict:
    """Train on the train split (streamed from the manifest: only each batch's crops are decoded), evaluate on
    val and test, write checkpoint + metrics + bundle (+ `rejects.parquet`); return the metrics."""
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    table, rejects = readable_rows(table, config)
    write_rejects(output / REJECTS, rejects)
    train_rows = table.filter(pc.equal(table.column("split"), "train"))
    val, test = (load_split(table, vocabulary, name, config, config.data.label_source) for name in ("val", "test"))
    log(
        f"data: {len(train_rows)} train / {len(val)} val / {len(test)} test clips, "
        f"{len(vocabulary)} labels, {len(rejects)} rejected (listed in {output / REJECTS})"
    )
    torch.manual_seed(config.train.seed)  # the same initial weights on every run of the config
    features = None if config.is_audio else feature_matrix(train_rows)
    model = new_model(config, len(vocabulary), features)
    window = config.window_samples

    def report(record: dict) -> None:
        val_text = f" val mAP {record['val_map']:.3f}" if "val_map" in record else ""
        epoch = f"epoch {record['epoch']}/{config.train.epochs}"
        log(f"{epoch}: loss {record['train_loss']:.4f}{val_text} ({record['seconds']:.1f}s)")

    source = ManifestClips(train_rows, vocabulary, config, config.data.label_source)
    plan = train_plan(config, train_rows, vocabulary)
    history = fit(model, source, plan, val, config.train, window, on_epoch=report)
    feature_dim = None if features is None else features.shape[1]
    save_checkpoint(output / CHECKPOINT, model, config, vocabulary, feature_dim)
    batch = config.train.eval_batch_size
    metrics = {
        "val": evaluate(model, val, batch, window),
        "test": evaluate(model, test, batch, window),
        "history": history,
        "rejects": rejects,
    }
    # Adaptive thresholds on the frozen model, then the self-contained tagger bundle (`raymlc predict`).
    train = load_split(train_rows, vocabulary, None, config, config.data.label_source)
    fitted = fit_tagger_thresholds(model, train, val, config)
    metrics["test_adaptive"] = adaptive_f1(model, fitted, test, batch, window)
    log(f"thresholds fitted on {fitted.fit_split}: test macro-F1 {metrics['test_adaptive']['macro_f1']:.3f}")
    splits = {"train": train, "val": val, "test": test}
    summary = {key: metrics[key] for key in ("val", "test", "test_adaptive")}
    export_bundle(str(output / BUNDLE), model, config, vocabulary, fitted, splits, summary)
    write_json(output / METRICS, metrics)
    return metrics
