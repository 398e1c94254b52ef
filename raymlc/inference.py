"""Scoring one batch of clips with a tagger: the one function training, Ray Data and serving share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from raymlc.data.audio import eval_windows


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
