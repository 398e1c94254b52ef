"""The training stream (raymlc.data.stream): epoch plans, worker shares, balanced weights and batch reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from raymlc.config import DataConfig, TaggerConfig, TrainConfig
from raymlc.data import LabelVocabulary, normalize_manifest
from raymlc.data.dataset import load_split
from raymlc.data.stream import EpochPlan, ManifestClips, MemoryClips, balanced_weights
from raymlc.flagging import flags_from_pairs


@pytest.mark.parametrize(("n_rows", "batch_size"), [(96, 32), (100, 32), (7, 8), (1, 4)])
def test_uniform_epoch_visits_every_row_once_and_pads_only_the_last_batch(n_rows: int, batch_size: int) -> None:
    plan = EpochPlan.of(TrainConfig(batch_size=batch_size, seed=3), n_rows)
    assert plan.steps == -(-n_rows // batch_size)
    for epoch in range(3):
        rows, keys = plan.slots(epoch)
        assert len(rows) == len(keys) == plan.steps * batch_size
        first_pass = rows[:n_rows]
        np.testing.assert_array_equal(np.sort(first_pass), np.arange(n_rows))  # a permutation
        padding = rows[n_rows:]  # wraps around to the start of the same permutation
        np.testing.assert_array_equal(padding, np.resize(first_pass, len(padding)))
        assert len(padding) < batch_size or n_rows < batch_size
    assert not np.array_equal(plan.slots(0)[0], plan.slots(1)[0]) or n_rows == 1
    np.testing.assert_array_equal(
        plan.slots(2)[1], EpochPlan.of(TrainConfig(batch_size=batch_size, seed=3), n_rows).slots(2)[1]
    )


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_workers_split_every_global_batch_into_equal_shares(world_size: int) -> None:
    plan = EpochPlan.of(TrainConfig(batch_size=16, seed=0), 100)
    rows, keys = plan.slots(1)
    shares = [plan.worker_slots(1, rank, world_size) for rank in range(world_size)]
    for share_rows, share_keys in shares:
        assert len(share_rows) == len(share_keys) == plan.steps * 16 // world_size
    for step in range(plan.steps):
        share = 16 // world_size
        joined = np.concatenate([r[step * share : (step + 1) * share] for r, _ in shares])
        np.testing.assert_array_equal(joined, rows[step * 16 : (step + 1) * 16])
        joined_keys = np.concatenate([k[step * share : (step + 1) * share] for _, k in shares])
        np.testing.assert_array_equal(joined_keys, keys[step * 16 : (step + 1) * 16])
    with pytest.raises(ValueError, match="does not split into 3"):
        plan.worker_slots(0, 0, 3)


def test_steps_per_epoch_and_an_empty_split() -> None:
    plan = EpochPlan.of(TrainConfig(batch_size=10, steps_per_epoch=25), 100)
    rows, _ = plan.slots(0)
    assert len(rows) == 250 and np.bincount(rows).min() >= 2  # 2.5 passes over the 100 rows
    with pytest.raises(ValueError, match="train split is empty"):
        EpochPlan.of(TrainConfig(), 0)


def test_balanced_weights_match_the_formula_and_the_draws() -> None:
    vocabulary = LabelVocabulary(["a", "b", "c"])
    labels = pa.array([["a"], ["a"], ["a", "b"], ["a"], ["c"], []])
    weights = balanced_weights(labels, vocabulary)
    frequency = {"a": 4, "b": 1, "c": 1}
    raw = [sum(1 / frequency[name] for name in row) for row in labels.to_pylist()]
    raw[5] = 1 / 4  # no labels: one label of the most frequent class
    np.testing.assert_allclose(weights, np.array(raw) / sum(raw))
    plan = EpochPlan.of(TrainConfig(batch_size=100, steps_per_epoch=200, sampler="balanced"), 6, weights)
    drawn = np.bincount(plan.slots(0)[0], minlength=6) / 20000
    np.testing.assert_allclose(drawn, weights, atol=0.01)
    with pytest.raises(ValueError, match="sampling weights"):
        EpochPlan.of(TrainConfig(sampler="balanced"), 6)


def audio_rows(tmp_path: Path, n: int = 6) -> tuple[pa.Table, TaggerConfig]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"clip{i}.flac"
        sf.write(path, (rng.uniform(-0.5, 0.5, 8000 + 1000 * i) * 2**15).astype(np.int16) / 2**15, 8000)
        paths.append(str(path))
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": [f"c{i}" for i in range(n)],
                "audio": paths,
                "labels": [["a"] if i % 2 else ["b"] for i in range(n)],
                "removed_labels": [["b"] if i == 1 else [] for i in range(n)],
            }
        )
    )
    config = TaggerConfig.model_validate(
        {"data": {"manifest": "unused"}, "frontend": {"sample_rate": 8000, "window_seconds": 0.5}}
    )
    return table, config


def test_manifest_and_memory_sources_read_the_same_crops_targets_and_masks(tmp_path: Path) -> None:
    table, config = audio_rows(tmp_path)
    vocabulary = LabelVocabulary(["a", "b"])
    flags = flags_from_pairs(np.array([0, 4]), np.array([0, 0]), 2)
    manifest = ManifestClips(table, vocabulary, config, "clean", flags)
    memory_data = load_split(table, vocabulary, None, config, "clean")
    mask = np.ones((6, 2), np.float32)
    mask[[0, 4], 0] = 0
    memory = MemoryClips(memory_data, config.window_samples, mask)
    rows, keys = np.array([4, 1, 0, 5]), np.array([11, 12, 13, 14])
    from_files, from_memory = manifest.read(rows, keys), memory.read(rows, keys)
    for key in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(from_files[key], from_memory[key])
    assert from_files["inputs"].shape == (4, 4000)
    np.testing.assert_array_equal(from_files["targets"], [[0, 1], [1, 1], [0, 1], [1, 0]])  # clean: + removed
    np.testing.assert_array_equal(from_files["mask"], [[0, 1], [1, 1], [0, 1], [1, 1]])


def test_a_clip_that_fails_to_decode_counts_for_nothing(tmp_path: Path) -> None:
    table, config = audio_rows(tmp_path, n=2)
    Path(table.column("audio")[1].as_py()).write_bytes(b"not audio")
    batch = ManifestClips(table, LabelVocabulary(["a", "b"]), config).read(np.array([0, 1]), np.array([1, 2]))
    np.testing.assert_array_equal(batch["failed"], [False, True])
    np.testing.assert_array_equal(batch["mask"], [[1, 1], [0, 0]])
    assert not batch["inputs"][1].any()


def test_feature_rows_are_read_as_they_are() -> None:
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": ["x", "y"],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(4, dtype=np.float32)), 2),
                "labels": [["a"], []],
            }
        )
    )
    config = TaggerConfig(data=DataConfig(manifest="unused"), model={"kind": "mlp"})
    batch = ManifestClips(table, LabelVocabulary(["a"]), config).read(np.array([1, 0]), np.array([0, 0]))
    np.testing.assert_array_equal(batch["inputs"], [[2, 3], [0, 1]])
    np.testing.assert_array_equal(batch["targets"], [[0], [1]])
