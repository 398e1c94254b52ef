"""Input checks before training: relative audio paths, `data.audio_root`, unreadable clips, empty splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from raymlc.config import TaggerConfig
from raymlc.data import ManifestError
from raymlc.data.dataset import load_manifest_table
from raymlc.training import train_local

SPLIT_SIZES = {"train": 50, "val": 10, "test": 10}


def write_dataset(folder: Path, broken_train: int = 0) -> Path:
    """A dataset folder: `clips/*.flac` and `manifest.parquet` listing them by relative path; the first
    `broken_train` train clips are not audio."""
    rng = np.random.default_rng(0)
    (folder / "clips").mkdir(parents=True)
    rows = []
    for split, n in SPLIT_SIZES.items():
        for i in range(n):
            clip_id = f"{split}{i}"
            label = ["tone", "noise"][i % 2]
            t = np.arange(4000) / 8000
            wave = 0.3 * np.sin(2 * np.pi * 440 * t) if label == "tone" else rng.uniform(-0.3, 0.3, 4000)
            path = folder / "clips" / f"{clip_id}.flac"
            if split == "train" and i < broken_train:
                path.write_bytes(b"this is not a FLAC file")
            else:
                sf.write(path, wave, 8000)
            rows.append({"clip_id": clip_id, "audio": f"clips/{clip_id}.flac", "labels": [label], "split": split})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return folder / "manifest.parquet"


def config(manifest: str, **data) -> TaggerConfig:
    return TaggerConfig.model_validate(
        {
            "data": {"manifest": manifest, **data},
            "frontend": {"sample_rate": 8000, "window_seconds": 0.5, "n_mels": 16, "n_fft": 256, "win_length": 256},
            "model": {"channels": [4, 8], "embedding_dim": 8},
            "train": {"epochs": 1, "batch_size": 16},
            "thresholds": {"epochs": 5},
        }
    )


def test_relative_paths_resolve_against_the_manifest_folder_from_any_directory(tmp_path, monkeypatch) -> None:
    manifest = write_dataset(tmp_path / "dataset")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    table = load_manifest_table(config(str(manifest)))
    assert table.column("audio")[0].as_py() == str(tmp_path / "dataset" / "clips" / "train0.flac")
    metrics = train_local(config("../dataset/manifest.parquet"), Path("run"), log=lambda _: None)
    assert metrics["rejects"] == [] and len(metrics["history"]) == 1
    assert pq.read_table("run/rejects.parquet").num_rows == 0


def test_audio_root_replaces_the_manifest_folder(tmp_path) -> None:
    manifest = write_dataset(tmp_path / "dataset")
    moved = tmp_path / "audio"
    (tmp_path / "dataset").rename(moved)  # the clips now live elsewhere; the manifest moves back alone
    (tmp_path / "lists").mkdir()
    (moved / "manifest.parquet").rename(tmp_path / "lists" / manifest.name)
    table = load_manifest_table(config(str(tmp_path / "lists" / manifest.name), audio_root=str(moved)))
    assert table.column("audio")[0].as_py() == str(moved / "clips" / "train0.flac")


def test_a_mostly_unreadable_split_stops_before_training(tmp_path) -> None:
    manifest = write_dataset(tmp_path / "dataset", broken_train=15)  # 30 % of the train split
    with pytest.raises(
        ManifestError, match=r"15 of the 50 clips of the train split \(30\.0%\) cannot be read"
    ) as error:
        train_local(config(str(manifest)), tmp_path / "run", log=lambda _: None)
    assert "train0 (cannot decode" in str(error.value) and "data.max_reject_fraction = 0.05" in str(error.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_few_unreadable_clips_are_written_to_rejects_and_the_run_goes_on(tmp_path) -> None:
    manifest = write_dataset(tmp_path / "dataset", broken_train=1)  # 2 % of the train split
    metrics = train_local(config(str(manifest)), tmp_path / "run", log=lambda _: None)
    rejects = pq.read_table(tmp_path / "run" / "rejects.parquet").to_pylist()
    assert [(r["clip_id"], r["split"]) for r in rejects] == [("train0", "train")]
    assert "cannot decode" in rejects[0]["reason"]
    assert (tmp_path / "run" / "checkpoint.pt").exists() and metrics["test"]["map"] > 0


def test_an_empty_val_split_is_an_error(tmp_path) -> None:
    manifest = write_dataset(tmp_path / "dataset")
    table = pq.read_table(manifest)
    no_val = table.filter(pa.array([split != "val" for split in table.column("split").to_pylist()]))
    pq.write_table(no_val, manifest)
    with pytest.raises(ManifestError, match="the val split is empty"):
        train_local(config(str(manifest)), tmp_path / "run", log=lambda _: None)


def test_audio_root_has_one_home() -> None:
    with pytest.raises(ValueError, match=r"set data\.audio_root, not data\.options\.audio_root"):
        config("m.csv", options={"audio_root": "/audio"})
