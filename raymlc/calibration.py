"""Training side of the adaptive thresholds: fit them on a trained (frozen) tagger and export its bundle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from raymlc.bundle import save_bundle
from raymlc.config import RunConfig
from raymlc.data import LabelVocabulary
from raymlc.decision_rules import adaptive
from raymlc.engine import SplitData, predict
from raymlc.metrics import f1_scores
from raymlc.thresholds import AdaptiveThresholds, MemoryBank, fit_thresholds, idf, thresholds_for


@dataclass
class FittedThresholds:
    """The memory bank of the training clips, the fitted rule, and the split it was fitted on."""

    bank: MemoryBank
    thresholds: AdaptiveThresholds
    fit_split: str


def fit_tagger_thresholds(
    model: nn.Module,
    train: SplitData,
    val: SplitData,
    config: RunConfig,
    window_samples: int | None,
    mask: np.ndarray | None = None,
) -> FittedThresholds:
    """Build the bank from the training clips' embeddings and fit α, β, b on `config.thresholds.fit_split`.

    "val" uses the validation clips (neighbours from the training bank; falls back to "train" when val is
    empty); "train" uses the training clips, each excluded from its own neighbours, with `mask` (e.g.
    1 − teacher–student flags, [N_train, C]) marking the entries that count.
    """
    settings, batch = config.thresholds, config.train.eval_batch_size
    train_logits, train_embeddings = predict(model, train, batch, window_samples)
    bank = MemoryBank.build(train_embeddings, train.targets, settings.bank_size, settings.bank_seed)
    train_idf = idf(train.targets)
    if settings.fit_split == "val" and len(val):
        logits, embeddings = predict(model, val, batch, window_samples)
        module = fit_thresholds(logits, embeddings, val.targets, bank, train_idf, settings)
        return FittedThresholds(bank, module, "val")
    module = fit_thresholds(
        train_logits,
        train_embeddings,
        train.targets,
        bank,
        train_idf,
        settings,
        exclude=np.arange(len(train)),
        mask=mask,
    )
    return FittedThresholds(bank, module, "train")


def adaptive_f1(
    model: nn.Module, fitted: FittedThresholds, data: SplitData, batch_size: int, window_samples: int | None
) -> dict[str, float]:
    """Micro and macro F1 of the adaptive-threshold decisions on `data`."""
    logits, embeddings = predict(model, data, batch_size, window_samples)
    theta = thresholds_for(fitted.thresholds, fitted.bank, embeddings)
    micro, macro = f1_scores(data.targets, adaptive(logits, theta))
    return {"micro_f1": micro, "macro_f1": macro}


def export_bundle(
    uri: str,
    model: nn.Module,
    config: RunConfig,
    vocabulary: LabelVocabulary,
    fitted: FittedThresholds,
    splits: dict[str, SplitData],
    metrics: dict,
) -> None:
    """`save_bundle` with the data summary (manifest, label source, clips per split, threshold fit split)."""
    data = {
        "manifest": config.data.manifest,
        "test_manifest": config.data.test_manifest,
        "label_source": config.data.label_source,
        "clips": {name: len(split) for name, split in splits.items()},
        "threshold_fit_split": fitted.fit_split,
        "memory_bank_size": len(fitted.bank),
    }
    train = splits["train"]
    feature_dim = None if train.is_audio else int(train.inputs.shape[1])
    save_bundle(uri, model, config, vocabulary, fitted.thresholds, fitted.bank, feature_dim, data, metrics)
