"""A configured manifest in memory (`raymlc.data.dataset`): which inputs a config decodes, labels-only splits,
and the error for a manifest that does not fit the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlc.config import TaggerConfig
from raymlc.data import LabelVocabulary, ManifestError, normalize_manifest
from raymlc.data.dataset import load_dataset, load_manifest_table, load_split


def feature_manifest(path: Path) -> Path:
    features = np.arange(40, dtype=np.float32).reshape(10, 4)
    table = pa.table(
        {
            "clip_id": [f"c{i}" for i in range(10)],
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 4),
            "labels": [["a"] if i % 2 else ["b"] for i in range(10)],
            "removed_labels": [["b"] if i % 2 else [] for i in range(10)],
            "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 2,
        }
    )
    pq.write_table(normalize_manifest(table), path)
    return path


def test_a_feature_manifest_loads_for_an_mlp_and_is_refused_for_a_cnn(tmp_path: Path) -> None:
    manifest = str(feature_manifest(tmp_path / "m.parquet"))
    mlp = TaggerConfig.model_validate({"data": {"manifest": manifest}, "model": {"kind": "mlp"}})
    assert not mlp.is_audio and mlp.window_samples is None
    dataset = load_dataset(mlp)
    np.testing.assert_array_equal(dataset.train.inputs, np.arange(24, dtype=np.float32).reshape(6, 4))
    assert dataset.train.feature_dim == 4 and len(dataset.val) == len(dataset.test) == 2
    cnn = TaggerConfig.model_validate({"data": {"manifest": manifest}, "frontend": {"window_seconds": 0.5}})
    assert cnn.is_audio and cnn.window_samples == 8000
    with pytest.raises(ManifestError, match=r"a cnn model needs a manifest with a 'audio' column"):
        load_dataset(cnn)


def test_labels_only_and_clean_labels(tmp_path: Path) -> None:
    config = TaggerConfig.model_validate({"data": {"manifest": str(feature_manifest(tmp_path / "m.parquet"))}})
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    observed = load_split(table, vocabulary, "train", config, decode=False)  # a CNN config: nothing is decoded
    assert observed.inputs.shape == (6, 0)
    np.testing.assert_array_equal(observed.targets, [[0, 1], [1, 0]] * 3)
    clean = load_split(table, vocabulary, "train", config, label_source="clean", decode=False)
    np.testing.assert_array_equal(clean.targets, [[0, 1], [1, 1]] * 3)
    taken = observed.take(np.array([5, 0]))
    assert taken.clip_ids == ["c5", "c0"] and taken.targets.tolist() == [[1, 0], [0, 1]]
