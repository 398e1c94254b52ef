"""Scoring clips with a tagger: one batch (`score_batch`, shared by training, Ray Data and serving), a whole
split (`predict`), its metrics (`evaluate`), and a checkpoint's metrics on one split (`evaluate_checkpoint`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from raymlc.checkpoint import load_checkpoint
from raymlc.config import TaggerConfig
from raymlc.data.audio import eval_windows
from raymlc.data.dataset import SplitData, load_manifest_table, load_split
from raymlc.data.files import write_json
from raymlc.metrics import summarize

METRICS = "metrics.json"


@torch.no_grad()
def score_batch(
    model: nn.Module, inputs: Sequence[np.ndarray] | np.ndarray, window_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-level logits [B, C] and embeddings [B, E] of one batch, the model in eval mode.

    Waveforms (a sequence of 1-D arrays of any length) are cut into the model's deterministic windows;
    a clip's logits are the max and its embedding the mean over its windows. Feature rows [B, D] go
    straight in. Training, Ray Data scoring and serving all score through this function.
    """
    device = next(model.parameters()).device
    if window_samples is None:
        output = model(torch.as_tensor(np.asarray(inputs, dtype=np.float32)).to(device))
        return output.logits.cpu(), output.embedding.cpu()
    windows = [eval_windows(wave, window_samples) for wave in inputs]
    counts = [len(w) for w in windows]
    output = model(torch.from_numpy(np.concatenate(windows)).to(device))
    logits = torch.stack([chunk.amax(dim=0) for chunk in output.logits.split(counts)])
    embeddings = torch.stack([chunk.mean(dim=0) for chunk in output.embedding.split(counts)])
    return logits.cpu(), embeddings.cpu()


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


def evaluate_checkpoint(checkpoint: Path, split: str, output: Path, config: TaggerConfig | None = None) -> dict:
    """Evaluate a checkpoint on one split of its (or `config`'s) manifest; write and return `metrics.json`."""
    model, saved_config, vocabulary = load_checkpoint(checkpoint)
    config = config or saved_config
    data = load_split(load_manifest_table(config), vocabulary, split, config, config.data.label_source)
    metrics = {split: evaluate(model, data, config.train.eval_batch_size, config.window_samples)}
    metrics["rejects"] = data.rejects
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / METRICS, metrics)
    return metrics
