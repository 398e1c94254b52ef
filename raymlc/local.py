"""Single-process runs from a `RunConfig`: train a tagger, evaluate a checkpoint, write `metrics.json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from torch import nn

from raymlc.calibration import adaptive_f1, export_bundle, fit_tagger_thresholds
from raymlc.config import RunConfig
from raymlc.data import LabelVocabulary, assign_splits, read_manifest
from raymlc.engine import SplitData, evaluate, fit, load_split
from raymlc.models import FeatureMLP, build_model

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
BUNDLE = "bundle"


@dataclass
class Dataset:
    """A manifest split three ways, with its label vocabulary."""

    vocabulary: LabelVocabulary
    train: SplitData
    val: SplitData
    test: SplitData

    @property
    def feature_dim(self) -> int | None:
        return None if self.train.is_audio else int(self.train.inputs.shape[1])

    @property
    def rejects(self) -> list[dict]:
        return self.train.rejects + self.val.rejects + self.test.rejects


def load_manifest_table(config: RunConfig) -> pa.Table:
    """The configured manifest with every row assigned to train/val/test."""
    data = config.data
    table = read_manifest(data.manifest, format=data.format, **data.options)
    test_fraction = data.test_fraction
    if data.test_manifest:
        test = read_manifest(data.test_manifest, format=data.format, **data.options)
        test = test.set_column(test.schema.get_field_index("split"), "split", pa.array(["test"] * len(test)))
        table = pa.concat_tables([table, test], promote_options="permissive")
        test_fraction = 0.0
    if pc.any(pc.is_null(table.column("split"))).as_py():
        vocabulary = LabelVocabulary.from_table(table)
        table = assign_splits(table, vocabulary, data.val_fraction, test_fraction, data.split_seed)
    return table


def load_dataset(config: RunConfig) -> Dataset:
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    frontend = config.frontend if "features" not in table.column_names else None
    splits = [
        load_split(table, vocabulary, name, frontend, config.data.label_source) for name in ("train", "val", "test")
    ]
    return Dataset(vocabulary, *splits)


def window_samples(config: RunConfig) -> int | None:
    """Samples per model window for the CNN; None for feature models."""
    return round(config.frontend.window_seconds * config.frontend.sample_rate) if config.model.kind == "cnn" else None


def new_model(config: RunConfig, dataset: Dataset) -> nn.Module:
    model = build_model(config.model, config.frontend, len(dataset.vocabulary), dataset.feature_dim)
    if isinstance(model, FeatureMLP):
        model.set_standardization(torch.from_numpy(dataset.train.inputs))
    return model


def save_checkpoint(
    path: Path, model: nn.Module, config: RunConfig, vocabulary: LabelVocabulary, feature_dim: int | None
) -> None:
    """`checkpoint.pt`: weights, the run config, the label vocabulary and the feature dimension."""
    torch.save(
        {
            "model_state": model.state_dict(),
            "config": config.core().model_dump(),
            "vocabulary": list(vocabulary.names),
            "feature_dim": feature_dim,
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[nn.Module, RunConfig, LabelVocabulary]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = RunConfig.model_validate(state["config"])
    vocabulary = LabelVocabulary(state["vocabulary"])
    model = build_model(config.model, config.frontend, len(vocabulary), state["feature_dim"])
    model.load_state_dict(state["model_state"])
    return model, config, vocabulary


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def train_local(config: RunConfig, output: Path, log: Callable[[str], None] = print) -> dict:
    """Train on the train split, evaluate on val and test, write checkpoint + metrics; return metrics."""
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
    model = new_model(config, dataset)
    window = window_samples(config)

    def report(record: dict) -> None:
        val = f" val mAP {record['val_map']:.3f}" if "val_map" in record else ""
        epoch = f"epoch {record['epoch']}/{config.train.epochs}"
        log(f"{epoch}: loss {record['train_loss']:.4f}{val} ({record['seconds']:.1f}s)")

    history = fit(model, dataset.train, dataset.val, config.train, window, on_epoch=report)
    save_checkpoint(output / CHECKPOINT, model, config, dataset.vocabulary, dataset.feature_dim)
    batch = config.train.eval_batch_size
    metrics = {
        "val": evaluate(model, dataset.val, batch, window) if len(dataset.val) else None,
        "test": evaluate(model, dataset.test, batch, window),
        "history": history,
        "rejects": dataset.rejects,
    }
    # Adaptive thresholds on the frozen model, then the self-contained tagger bundle (`raymlc predict`).
    fitted = fit_tagger_thresholds(model, dataset.train, dataset.val, config, window)
    metrics["test_adaptive"] = adaptive_f1(model, fitted, dataset.test, batch, window)
    log(f"thresholds fitted on {fitted.fit_split}: test macro-F1 {metrics['test_adaptive']['macro_f1']:.3f}")
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    summary = {key: metrics[key] for key in ("val", "test", "test_adaptive")}
    export_bundle(str(output / BUNDLE), model, config, dataset.vocabulary, fitted, splits, summary)
    write_json(output / METRICS, metrics)
    return metrics


def evaluate_local(checkpoint: Path, split: str, output: Path, config: RunConfig | None = None) -> dict:
    """Evaluate a checkpoint on one split of its (or `config`'s) manifest; write and return metrics."""
    model, saved_config, vocabulary = load_checkpoint(checkpoint)
    config = config or saved_config
    table = load_manifest_table(config)
    frontend = config.frontend if "features" not in table.column_names else None
    data = load_split(table, vocabulary, split, frontend, config.data.label_source)
    metrics = {split: evaluate(model, data, config.train.eval_batch_size, window_samples(config))}
    metrics["rejects"] = data.rejects
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / METRICS, metrics)
    return metrics
