"""Taggers: a small log-mel CNN for waveforms and an MLP for feature vectors.

Every model maps a batch to `TaggerOutput(logits [B, C], embedding [B, E])`; the embedding is the
penultimate layer (what the KNN thresholds and the relabeling job compare clips by).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import nn

from raymlc.config import FrontEndConfig, ModelConfig
from raymlc.features import LogMel


class TaggerOutput(NamedTuple):
    logits: torch.Tensor
    embedding: torch.Tensor


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class AudioCNN(nn.Module):
    """LogMel -> conv blocks (3x3 conv, BN, ReLU, 2x2 max pool) -> mean over mel, max+mean over time -> FC."""

    def __init__(self, frontend: FrontEndConfig, config: ModelConfig, n_classes: int) -> None:
        super().__init__()
        self.frontend = LogMel(frontend)
        channels = [1, *config.channels]
        self.blocks = nn.Sequential(*(_conv_block(a, b) for a, b in itertools.pairwise(channels)))
        self.embed = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(channels[-1], config.embedding_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(config.embedding_dim, n_classes)

    def forward(self, waveform: torch.Tensor) -> TaggerOutput:
        x = self.blocks(self.frontend(waveform)).mean(dim=2)  # [B, C, frames]
        pooled = x.amax(dim=-1) + x.mean(dim=-1)
        embedding = self.embed(pooled)
        return TaggerOutput(self.head(embedding), embedding)


class FeatureMLP(nn.Module):
    """Standardize -> (Linear, ReLU, Dropout) x N -> embedding -> logits, for `features` manifests."""

    def __init__(self, feature_dim: int, config: ModelConfig, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        sizes = [feature_dim, *config.hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
        layers += [nn.Linear(sizes[-1], config.embedding_dim), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.embedding_dim, n_classes)

    def set_standardization(self, features: torch.Tensor) -> None:
        """Store the training features' per-dimension mean and std (constant columns get std 1)."""
        std = features.std(dim=0)
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> TaggerOutput:
        embedding = self.body((features - self.feature_mean) / self.feature_std)
        return TaggerOutput(self.head(embedding), embedding)


def build_model(
    config: ModelConfig, frontend: FrontEndConfig, n_classes: int, feature_dim: int | None = None
) -> nn.Module:
    """The tagger a config describes; `feature_dim` is required for the MLP."""
    if config.kind == "cnn":
        return AudioCNN(frontend, config, n_classes)
    if feature_dim is None:
        raise ValueError("an mlp model needs feature_dim (a manifest with a 'features' column)")
    return FeatureMLP(feature_dim, config, n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward pass on `example` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return counter.get_total_flops()
