"""One training loop in plain PyTorch, the unit that Ray Train wraps, and single-process training (`train_local`).

A split is held in memory as a `SplitData` (waveforms are cropped to the model window at batch time,
randomly when training). `train_local` trains on the train split, evaluates on val and test, fits the
adaptive thresholds on the frozen model and writes `checkpoint.pt`, `metrics.json` and the tagger bundle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from raymlc.bundle import export_bundle
from raymlc.checkpoint import CHECKPOINT, save_checkpoint
from raymlc.config import TaggerConfig, TrainConfig
from raymlc.data.audio import fit_window
from raymlc.data.dataset import SplitData, load_dataset
from raymlc.data.files import write_json
from raymlc.losses import masked_bce, sigmoid_f1
from raymlc.models import FeatureMLP, build_model
from raymlc.scoring import METRICS, evaluate
from raymlc.thresholds import adaptive_f1, fit_tagger_thresholds

BUNDLE = "bundle"
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def new_model(config: TaggerConfig, n_classes: int, train: SplitData) -> nn.Module:
    """A freshly initialized tagger for `config` (an MLP standardized with the train split's features)."""
    model = build_model(config.model, config.frontend, n_classes, train.feature_dim)
    if isinstance(model, FeatureMLP):
        model.set_standardization(torch.from_numpy(train.inputs))
    return model


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


def train_local(config: TaggerConfig, output: Path, log: Callable[[str], None] = print) -> dict:
    """Train on the train split, evaluate on val and test, write checkpoint + metrics + bundle; return metrics."""
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    dataset = load_dataset(config)
    log(
        f"data: {len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test clips, "
        f"{len(dataset.vocabulary)} labels, {len(dataset.rejects)} rejected"
    )
    for reject in dataset.rejects:
        log(f"rejected {reject['clip_id']}: {reject['reason']}")
    torch.manual_seed(config.train.seed)  # the same initial weights on every run of the config
    model = new_model(config, len(dataset.vocabulary), dataset.train)
    window = config.window_samples

    def report(record: dict) -> None:
        val = f" val mAP {record['val_map']:.3f}" if "val_map" in record else ""
        epoch = f"epoch {record['epoch']}/{config.train.epochs}"
        log(f"{epoch}: loss {record['train_loss']:.4f}{val} ({record['seconds']:.1f}s)")

    history = fit(model, dataset.train, dataset.val, config.train, window, on_epoch=report)
    save_checkpoint(output / CHECKPOINT, model, config, dataset.vocabulary, dataset.train.feature_dim)
    batch = config.train.eval_batch_size
    metrics = {
        "val": evaluate(model, dataset.val, batch, window) if len(dataset.val) else None,
        "test": evaluate(model, dataset.test, batch, window),
        "history": history,
        "rejects": dataset.rejects,
    }
    # Adaptive thresholds on the frozen model, then the self-contained tagger bundle (`raymlc predict`).
    fitted = fit_tagger_thresholds(model, dataset.train, dataset.val, config)
    metrics["test_adaptive"] = adaptive_f1(model, fitted, dataset.test, batch, window)
    log(f"thresholds fitted on {fitted.fit_split}: test macro-F1 {metrics['test_adaptive']['macro_f1']:.3f}")
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    summary = {key: metrics[key] for key in ("val", "test", "test_adaptive")}
    export_bundle(str(output / BUNDLE), model, config, dataset.vocabulary, fitted, splits, summary)
    write_json(output / METRICS, metrics)
    return metrics
