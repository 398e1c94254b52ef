"""Ray Train around the core loop: DDP over 2 workers, checkpoints, resume by name, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.train

from raymlc.config import PipelineConfig
from raymlc.data import LabelVocabulary, normalize_manifest
from raymlc.data.dataset import SplitData, load_manifest_table, load_split
from raymlc.data.stream import EpochPlan
from raymlc.distributed.training import build_trainer, flag_mask, readable_splits, train_distributed
from raymlc.flagging import flags_from_pairs, load_flags, save_flags
from raymlc.scoring import evaluate

pytestmark = pytest.mark.slow
VOCABULARY = LabelVocabulary(["a", "b", "c"])


def write_features_manifest(path: Path, n_train: int, dim: int = 16, seed: int = 0) -> Path:
    """Label l present iff feature l > 0.3 (learnable); 100 val and 100 test rows."""
    rng = np.random.default_rng(seed)
    n = n_train + 200
    features = rng.normal(size=(n, dim)).astype(np.float32)
    names = ["a", "b", "c"]
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": [f"c{i}" for i in range(n)],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), dim),
                "labels": [[names[k] for k in range(3) if row[k] > 0.3] for row in features],
                "split": ["train"] * n_train + ["val"] * 100 + ["test"] * 100,
            }
        )
    )
    pq.write_table(table, path)
    return path


def pipeline_config(manifest: Path, storage: Path, epochs: int, num_workers: int = 2, **train) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data": {"manifest": str(manifest)},
            "model": {"kind": "mlp", "hidden": [32], "embedding_dim": 16, "dropout": 0.0},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, **train},
            "ray": {
                "num_workers": num_workers,
                "cpus_per_worker": 0.5,
                "storage_path": str(storage),
                "max_failures": 2,
            },
        }
    )


def test_flag_mask_zeroes_flagged_entries_of_the_loaded_shard_clips(tmp_path: Path) -> None:
    # Flags by train-split position: (1, a), (4, b), (3, a), (0, b). The shard holds positions 3, 1, 4 and
    # the clip at position 1 failed to load, so the mask has the rows of t3 and t4 only.
    save_flags(flags_from_pairs(np.array([1, 4, 3, 0]), np.array([0, 1, 0, 1]), 2), str(tmp_path / "flags.parquet"))
    shard_rows = np.array([3, 1, 4])
    shard = pa.table({"clip_id": [f"t{i}" for i in shard_rows]})
    zeros = np.zeros((2, 2), np.float32)
    loaded = SplitData(["t3", "t4"], np.zeros((2, 1), np.float32), zeros, zeros, zeros)
    mask = flag_mask(load_flags(str(tmp_path / "flags.parquet")), loaded, shard, shard_rows)
    np.testing.assert_array_equal(mask, [[0, 1], [1, 0]])
    assert mask.dtype == np.float32


def train(config: PipelineConfig, name: str, vocabulary: LabelVocabulary = VOCABULARY):
    splits, _ = readable_splits(load_manifest_table(config), config)
    return train_distributed(config, name, vocabulary, splits)


def traces(trace_dir: Path, name: str, rank: int, epoch: int) -> np.ndarray:
    """[steps, worker batch] train rows that worker `rank` of run `name` trained on in `epoch`."""
    return np.load(trace_dir / f"{name}-rank{rank}-epoch{epoch}.npy")


def test_two_workers_learn_and_rerun_resumes(ray_session, tmp_path: Path) -> None:
    manifest = write_features_manifest(tmp_path / "m.parquet", n_train=600)
    first = train(pipeline_config(manifest, tmp_path / "ray", 3), "run")
    assert [r["epoch"] for r in first.history] == [1, 2, 3]
    assert all("val_map" in r for r in first.history)

    # Same name, more epochs: continues from epoch 3 instead of starting again.
    second = train(pipeline_config(manifest, tmp_path / "ray", 5), "run")
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4, 5]
    assert second.history[:3] == first.history

    table = pq.read_table(manifest)
    test = load_split(table, VOCABULARY, "test", pipeline_config(manifest, tmp_path / "ray", 5))
    assert evaluate(second.load_model(), test, 64, None)["map"] > 0.9


def test_workers_share_every_global_batch_of_the_plan(ray_session, train_trace_dir: Path, tmp_path: Path) -> None:
    # 100 train rows, global batch 32: 4 steps, the last one padded with the first 28 rows of the permutation.
    manifest = write_features_manifest(tmp_path / "m.parquet", n_train=100)
    for workers in (1, 2):
        config = pipeline_config(manifest, tmp_path / "ray", 2, num_workers=workers)
        train(config, f"w{workers}")
        plan = EpochPlan(n_rows=100, batch_size=32, steps=4, seed=0)
        for epoch in range(2):
            shares = [traces(train_trace_dir, f"w{workers}", rank, epoch) for rank in range(workers)]
            assert all(share.shape == (4, 32 // workers) for share in shares)  # per-worker batch = global / W
            steps = np.concatenate(shares, axis=1)  # step k of every worker: global batch k
            np.testing.assert_array_equal(steps.ravel(), plan.slots(epoch)[0])
            counts = np.bincount(steps.ravel(), minlength=100)
            assert counts.min() == 1 and counts.sum() - 100 == 28  # every row once, 28 padding repeats
    # The same seed and worker count: the same batches again.
    train(pipeline_config(manifest, tmp_path / "ray", 2, num_workers=2), "w2-again")
    for rank in range(2):
        np.testing.assert_array_equal(
            traces(train_trace_dir, "w2-again", rank, 1), traces(train_trace_dir, "w2", rank, 1)
        )


def test_killed_worker_is_replaced_and_training_finishes(
    ray_session, train_pid_dir: Path, train_trace_dir: Path, tmp_path: Path
) -> None:
    manifest = write_features_manifest(tmp_path / "m.parquet", n_train=6000)
    config = pipeline_config(manifest, tmp_path / "ray", 4, batch_size=16)
    pid_file = train_pid_dir / "kill-rank1.pid"
    killed: list[int] = []

    def kill_rank1_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list((tmp_path / "ray" / "kill").glob("checkpoint_*")) and pid_file.exists():
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank1_after_first_checkpoint, daemon=True)
    killer.start()
    result = train(config, "kill")
    killer.join(timeout=5)
    assert killed, "rank 1 was never killed"
    assert int(pid_file.read_text()) != killed[0]  # a new worker took over
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    # The replacement rebuilt the stream of the epochs after the checkpoint: still the plan's batches.
    plan = EpochPlan(n_rows=6000, batch_size=16, steps=375, seed=0)
    for epoch in range(4):
        steps = np.concatenate([traces(train_trace_dir, "kill", rank, epoch) for rank in range(2)], axis=1)
        np.testing.assert_array_equal(steps.ravel(), plan.slots(epoch)[0])


def test_seed_workers_report_the_final_objective_through_the_callbacks(ray_session, tmp_path: Path) -> None:
    # A sweep trial's shape: one worker per seed, flags, and an objective computed by the workers after the
    # last epoch. It reaches the run's callbacks with the last report, as the seed mean and spread.
    manifest = write_features_manifest(tmp_path / "m.parquet", n_train=200)
    config = pipeline_config(manifest, tmp_path / "ray", 2, num_workers=1)
    save_flags(flags_from_pairs(np.array([5, 7, 7]), np.array([0, 1, 2]), 3), str(tmp_path / "flags.parquet"))
    directory = str(tmp_path)

    class Record:  # the final objective: saves what it was given (per seed), returns the model's val mAP
        def __call__(self, model, train: SplitData, val: SplitData, config, mask: np.ndarray | None) -> float:
            np.save(Path(directory, f"mask-seed{config.train.seed}.npy"), mask)
            Path(directory, f"train-seed{config.train.seed}.txt").write_text("\n".join(train.clip_ids))
            return evaluate(model, val, 64, None)["map"]

    class Collect(ray.train.UserCallback):  # runs in the controller: appends each report to a file
        def after_report(self, run_context, metrics, checkpoint) -> None:
            with Path(directory, "reports.jsonl").open("a") as out:
                out.write(json.dumps(metrics[0]) + "\n")

    splits, _ = readable_splits(load_manifest_table(config), config)
    flags = str(tmp_path / "flags.parquet")
    trainer = build_trainer(
        config, "seeds", VOCABULARY, splits, flags=flags, seeds=[3, 4], callbacks=[Collect()], final_objective=Record()
    )
    assert trainer.fit().error is None
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert [report["epoch"] for report in reports] == [1, 2] and "objective" not in reports[0]
    expected = np.ones((200, 3), np.float32)
    expected[[5, 7, 7], [0, 1, 2]] = 0
    for seed in (3, 4):
        np.testing.assert_array_equal(np.load(tmp_path / f"mask-seed{seed}.npy"), expected)
        assert (tmp_path / f"train-seed{seed}.txt").read_text().split() == [f"c{i}" for i in range(200)]
    # The objective here is each seed's val mAP, so its mean and spread are those of val_map.
    assert reports[-1]["objective"] == pytest.approx(reports[-1]["val_map"])
    assert reports[-1]["objective_std"] == pytest.approx(reports[-1]["val_map_std"])
    assert reports[-1]["val_map_std"] > 0  # two different seeds
