"""The checkpoint format (`checkpoint.pt`): a model's weights with the config, vocabulary and feature dimension
that rebuild it. Written by single-process training, Ray Train and the benchmarks; read by scoring and export."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raymlc.config import TaggerConfig
from raymlc.data import LabelVocabulary
from raymlc.models import build_model

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    path: Path, model: nn.Module, config: TaggerConfig, vocabulary: LabelVocabulary, feature_dim: int | None
) -> None:
    """`checkpoint.pt`: weights, the tagger config, the label vocabulary and the feature dimension."""
    torch.save(
        {
            "model_state": model.state_dict(),
            "config": config.core().model_dump(),
            "vocabulary": list(vocabulary.names),
            "feature_dim": feature_dim,
        },
        path,
    )


def read_config(path: Path) -> TaggerConfig:
    """The tagger config stored in a checkpoint (without building its model)."""
    return TaggerConfig.model_validate(torch.load(path, map_location="cpu", weights_only=True)["config"])


def load_checkpoint(path: Path) -> tuple[nn.Module, TaggerConfig, LabelVocabulary]:
    """The model (on the CPU), its config and its vocabulary."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = TaggerConfig.model_validate(state["config"])
    vocabulary = LabelVocabulary(state["vocabulary"])
    model = build_model(config.model, config.frontend, len(vocabulary), state["feature_dim"])
    model.load_state_dict(state["model_state"])
    return model, config, vocabulary
