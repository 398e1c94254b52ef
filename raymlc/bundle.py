"""Tagger bundle: one directory (local path or object-store URI) with all a trained tagger needs to tag clips.

    metadata.json     format, version, created, raymlc version, data summary, run config (front end and
                      model included), feature_dim, metrics; written last, so its presence marks a whole bundle
    labels.json       the label vocabulary (column order of every output)
    model.pt          the model's state_dict (loaded with torch.load(weights_only=True))
    thresholds.npz    the adaptive-threshold rule: idf, alpha, beta, bias (float32 [C]), lam, k
    memory_bank.npz   the KNN memory bank: embeddings (float16 [M, E], unit norm), targets (uint8 [M, C]), ids

`load_bundle` rebuilds a `Tagger` without the training code (no `raymlc.training` import); `Tagger.tag_waveforms` /
`tag_features` are the one batch function the CLI, Ray Data and Serve call.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from torch import nn

import raymlc
from raymlc.config import TaggerConfig
from raymlc.data import LabelVocabulary
from raymlc.data.audio import decode_audio
from raymlc.data.dataset import SplitData
from raymlc.data.files import resolve
from raymlc.models import build_model
from raymlc.scoring import score_batch
from raymlc.thresholds import AdaptiveThresholds, FittedThresholds, MemoryBank, thresholds_for

BUNDLE_FORMAT = "raymlc-tagger-bundle"
BUNDLE_VERSION = 1
METADATA, LABELS, WEIGHTS, THRESHOLDS, BANK = (
    "metadata.json",
    "labels.json",
    "model.pt",
    "thresholds.npz",
    "memory_bank.npz",
)


class BundleError(ValueError):
    """A directory that is not a readable tagger bundle of a supported version."""


@dataclass
class TagResult:
    """Outputs for a batch of B clips: logits, thresholds (logit scale) and decisions [B, C], embeddings."""

    logits: np.ndarray  # float32 [B, C], max over a clip's windows
    thresholds: np.ndarray  # float32 [B, C], θ(x)
    present: np.ndarray  # bool [B, C], logits > thresholds
    embeddings: np.ndarray  # float32 [B, E], mean over a clip's windows


class Tagger:
    """A trained tagger with its labels and adaptive thresholds, ready to tag batches of clips."""

    def __init__(
        self,
        model: nn.Module,
        config: TaggerConfig,
        vocabulary: LabelVocabulary,
        thresholds: AdaptiveThresholds,
        bank: MemoryBank,
        metadata: dict,
    ) -> None:
        self.model = model.eval()
        self.config = config
        self.vocabulary = vocabulary
        self.thresholds = thresholds.eval()
        self.bank = bank
        self.metadata = metadata

    @property
    def is_audio(self) -> bool:
        """True for waveform taggers (CNN), False for feature-vector taggers (MLP)."""
        return self.config.is_audio

    @property
    def sample_rate(self) -> int:
        return self.config.frontend.sample_rate

    def tag_waveforms(self, waveforms: Sequence[np.ndarray]) -> TagResult:
        """Tag mono waveforms at `sample_rate` (any lengths): each clip is cut into `eval_windows`; its logits
        are the max and its embedding the mean over its windows (`raymlc.scoring.score_batch`)."""
        if not self.is_audio:
            raise ValueError("this bundle tags feature vectors: use tag_features")
        if not len(waveforms):
            return self._empty()
        logits, embeddings = score_batch(self.model, waveforms, self.config.window_samples)
        return self._result(logits.numpy(), embeddings.numpy())

    def tag_features(self, features: np.ndarray) -> TagResult:
        """Tag feature vectors [B, D] (feature bundles only)."""
        if self.is_audio:
            raise ValueError("this bundle tags waveforms: use tag_waveforms")
        if not len(features):
            return self._empty()
        logits, embeddings = score_batch(self.model, np.asarray(features, dtype=np.float32), None)
        return self._result(logits.numpy(), embeddings.numpy())

    def read_input(self, path: str) -> np.ndarray:
        """One model input from a file: the decoded waveform (audio bundles), else a `.npy` vector [D].

        Raises `AudioError` / `ValueError` (OSError for unreadable `.npy` files) naming the file.
        """
        if self.is_audio:
            return decode_audio(path, clip_id=path, sample_rate=self.sample_rate)
        vector = np.load(path, allow_pickle=False)
        expected = self.metadata["feature_dim"]
        if vector.shape != (expected,):
            raise ValueError(f"{path}: expected a feature vector of shape ({expected},), got {vector.shape}")
        return vector.astype(np.float32)

    def tag(self, inputs: Sequence[np.ndarray]) -> TagResult:
        """`tag_waveforms` or `tag_features`, whichever this bundle takes (inputs as from `read_input`)."""
        return self.tag_waveforms(inputs) if self.is_audio else self.tag_features(np.stack(inputs))

    def _empty(self) -> TagResult:
        logits = np.zeros((0, len(self.vocabulary)), np.float32)
        return self._result(logits, np.zeros((0, self.bank.embeddings.shape[1]), np.float32))

    def _result(self, logits: np.ndarray, embeddings: np.ndarray) -> TagResult:
        theta = thresholds_for(self.thresholds, self.bank, embeddings)
        return TagResult(logits, theta, logits > theta, embeddings)


def save_bundle(
    uri: str,
    model: nn.Module,
    config: TaggerConfig,
    vocabulary: LabelVocabulary,
    thresholds: AdaptiveThresholds,
    bank: MemoryBank,
    feature_dim: int | None = None,
    data: dict | None = None,
    metrics: dict | None = None,
) -> None:
    """Write a bundle to the folder `uri` (local path or s3://, gs://, file:// URI); `feature_dim` is required
    for feature (MLP) models, `data` and `metrics` are free-form summaries kept in metadata.json."""
    filesystem, root = resolve(uri)
    filesystem.create_dir(root, recursive=True)

    def write(name: str, payload: bytes) -> None:
        with filesystem.open_output_stream(f"{root}/{name}") as stream:
            stream.write(payload)

    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    write(WEIGHTS, weights.getvalue())
    write(LABELS, vocabulary.to_json().encode())
    write(THRESHOLDS, _npz(thresholds.to_arrays()))
    write(BANK, _npz({"embeddings": bank.embeddings, "targets": bank.targets, "ids": bank.ids}))
    metadata = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "raymlc_version": raymlc.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data or {},
        "config": config.core().model_dump(mode="json"),
        "feature_dim": feature_dim,
        "metrics": metrics or {},
    }
    write(METADATA, (json.dumps(metadata, indent=2) + "\n").encode())


def load_bundle(uri: str) -> Tagger:
    """The `Tagger` saved at `uri` (on CPU, in eval mode); `BundleError` when it is not a bundle."""
    filesystem, root = resolve(uri)

    def read(name: str) -> bytes:
        try:
            with filesystem.open_input_stream(f"{root}/{name}") as stream:
                return stream.read()
        except (FileNotFoundError, OSError) as error:
            raise BundleError(f"{uri}: not a tagger bundle (cannot read {name}: {error})") from None

    metadata = json.loads(read(METADATA))
    if metadata.get("format") != BUNDLE_FORMAT or metadata.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{uri}: unsupported bundle {metadata.get('format')!r} version {metadata.get('version')!r} "
            f"(this raymlc reads {BUNDLE_FORMAT!r} version {BUNDLE_VERSION})"
        )
    config = TaggerConfig.model_validate(metadata["config"])
    vocabulary = LabelVocabulary.from_json(read(LABELS).decode())
    model = build_model(config.model, config.frontend, len(vocabulary), metadata["feature_dim"])
    model.load_state_dict(torch.load(io.BytesIO(read(WEIGHTS)), map_location="cpu", weights_only=True))
    with np.load(io.BytesIO(read(THRESHOLDS)), allow_pickle=False) as arrays:
        thresholds = AdaptiveThresholds.from_arrays(dict(arrays))
    with np.load(io.BytesIO(read(BANK)), allow_pickle=False) as arrays:
        bank = MemoryBank(arrays["embeddings"], arrays["targets"], arrays["ids"])
    return Tagger(model, config, vocabulary, thresholds, bank, metadata)


def export_bundle(
    uri: str,
    model: nn.Module,
    config: TaggerConfig,
    vocabulary: LabelVocabulary,
    fitted: FittedThresholds,
    splits: dict[str, SplitData],
    metrics: dict,
) -> None:
    """`save_bundle` of a trained tagger with its fitted thresholds and the data summary (manifest, label
    source, clips per split, threshold fit split)."""
    data = {
        "manifest": config.data.manifest,
        "test_manifest": config.data.test_manifest,
        "label_source": config.data.label_source,
        "clips": {name: len(split) for name, split in splits.items()},
        "threshold_fit_split": fitted.fit_split,
        "memory_bank_size": len(fitted.bank),
    }
    feature_dim = splits["train"].feature_dim
    save_bundle(uri, model, config, vocabulary, fitted.thresholds, fitted.bank, feature_dim, data, metrics)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()
