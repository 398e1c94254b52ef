"""Ray Train: the core training loop (`raymlc.training`) under a `TorchTrainer` with DDP and checkpoints.

Each worker decodes only its shard of the train split (rank, rank + W, ... padded so every worker runs
the same number of steps). Rank 0 evaluates on val and writes a checkpoint every epoch (model,
optimizer, epoch, history); a replaced worker, or a rerun with the same name and storage path,
resumes from the newest checkpoint.

With `seeds` (a sweep trial), worker r instead trains its own model with seed `seeds[r]` on the whole
train split (no DDP); every worker evaluates on val and rank 0 reports the mean (and std) over seeds.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.train
import torch
from ray.train.torch import TorchTrainer, prepare_model

from raymlc.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from raymlc.config import PipelineConfig, TaggerConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import SplitData, load_manifest_table, load_split
from raymlc.data.files import absolute
from raymlc.flagging import crossfit_folds, flag_mask_for, load_flags
from raymlc.scoring import evaluate
from raymlc.training import cosine_lr, iterate_batches, make_loss, make_optimizer, new_model, train_epoch

TRAIN_STATE = "train_state.pt"


def seed_state(rank: int) -> str:
    """The training-state file of the model of seed index `rank` (seeds mode)."""
    return f"train_state-seed{rank}.pt"


@dataclass
class TrainResult:
    """The final checkpoint (in the run's storage) and the per-epoch history rank 0 reported."""

    checkpoint: ray.train.Checkpoint
    history: list[dict]

    def load_model(self) -> torch.nn.Module:
        """The trained model on the CPU, in eval mode."""
        with self.checkpoint.as_directory() as directory:
            model, _, _ = load_checkpoint(Path(directory, CHECKPOINT))
        return model.eval()


def shard_positions(n_rows: int, rank: int, world_size: int) -> np.ndarray:
    """Row positions of worker `rank`: every world_size-th row, wrapped so all shards have equal length."""
    per_worker = math.ceil(n_rows / world_size)
    return (rank + world_size * np.arange(per_worker)) % n_rows


def flag_mask(flags_path: str, train: SplitData, shard: pa.Table, shard_rows: np.ndarray) -> np.ndarray:
    """Loss mask [N, C] of the loaded clips of `shard` (train-split positions `shard_rows`): 0 where the saved
    `FlagResult` flags (row, class), else 1."""
    position = dict(zip(shard.column("clip_id").to_pylist(), shard_rows.tolist(), strict=True))
    rows = np.array([position[clip_id] for clip_id in train.clip_ids], dtype=np.int64)
    return (~flag_mask_for(rows, load_flags(flags_path))).astype(np.float32)


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Train worker; `loop_config` holds the run config, vocabulary and optional flags."""
    config = TaggerConfig.model_validate(loop_config["config"])
    vocabulary = LabelVocabulary(loop_config["vocabulary"])
    torch.set_num_threads(loop_config["torch_threads"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if pid_dir := os.environ.get("RAYMLC_TRAIN_PID_DIR"):  # lets tests find and kill a worker
        Path(pid_dir, f"{context.get_experiment_name()}-rank{rank}.pid").write_text(str(os.getpid()))

    seeds = loop_config.get("seeds")
    if seeds:
        config.train.seed = seeds[rank]
    torch.manual_seed(config.train.seed)  # the same initial weights on every run (DDP broadcasts rank 0's)
    table = load_manifest_table(config)
    train_rows = table.filter(pc.equal(table.column("split"), "train"))
    if holdout := loop_config.get("holdout"):  # a cross-fitting teacher: every fold but one
        folds = crossfit_folds(len(train_rows), holdout["folds"], holdout["seed"])
        train_rows = train_rows.filter(pa.array(folds != holdout["fold"]))
    shard_rows = np.arange(len(train_rows)) if seeds else shard_positions(len(train_rows), rank, world_size)
    shard = train_rows.take(pa.array(shard_rows))
    train = load_split(shard, vocabulary, None, config, loop_config["label_source"])
    mask = flag_mask(loop_config["flags"], train, shard, shard_rows) if loop_config.get("flags") else None
    evaluates = rank == 0 or bool(seeds)
    val = load_split(table, vocabulary, "val", config, loop_config["label_source"]) if evaluates else None
    state_file = seed_state(rank) if seeds else TRAIN_STATE

    feature_dim = train.feature_dim
    # An MLP is standardized with the whole train split's features, the same on every worker.
    full = train if seeds or config.is_audio else load_split(train_rows, vocabulary, None, config)
    model = new_model(config, len(vocabulary), full)
    optimizer = make_optimizer(model, config.train)
    start_epoch, history = 0, []
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory, state_file), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        start_epoch, history = state["epoch"], state["history"]
    model = model if seeds else prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    loss_fn = make_loss(config.train)
    window = config.window_samples

    for epoch in range(start_epoch, config.train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.train, epoch)
        rng = np.random.default_rng([config.train.seed, rank, epoch])
        batches = iterate_batches(train, config.train.batch_size, rng, window, mask)
        record = {"epoch": epoch + 1, "train_loss": train_epoch(model, optimizer, loss_fn, batches)}
        if val is not None and len(val):
            scores = evaluate(core, val, config.train.eval_batch_size, window)
            record |= {f"val_{key}": value for key, value in scores.items()}
        if seeds:
            record = _mean_over_seeds(record, world_size)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                val_text = f", val mAP {record['val_map']:.3f}" if "val_map" in record else ""
                print(f"[{context.get_experiment_name()}] epoch {epoch + 1}: loss {record['train_loss']:.4f}{val_text}")
            if evaluates:
                history.append(record)
                _save(Path(directory), state_file, core, optimizer, epoch + 1, history, config, vocabulary, feature_dim)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(record, checkpoint=checkpoint)


def _mean_over_seeds(record: dict, world_size: int) -> dict:
    """Every worker's record averaged over the workers (seeds), with `<key>_std` beside each metric."""
    records: list[dict] = [{} for _ in range(world_size)]
    torch.distributed.all_gather_object(records, record)
    merged = {"epoch": record["epoch"]}
    for key in sorted(record.keys() - {"epoch"}):
        values = np.array([r[key] for r in records], dtype=np.float64)
        merged |= {key: float(values.mean()), f"{key}_std": float(values.std())}
    return merged


def _save(
    directory: Path,
    state_file: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict],
    config: TaggerConfig,
    vocabulary: LabelVocabulary,
    feature_dim: int | None,
) -> None:
    """A checkpoint directory: the training state, plus `checkpoint.pt` (`raymlc.checkpoint`).

    In seeds mode every worker writes its own `state_file`; `checkpoint.pt` holds the first seed's model.
    """
    train_state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()}
    torch.save(train_state | {"epoch": epoch, "history": history}, directory / state_file)
    if state_file in (TRAIN_STATE, seed_state(0)):
        save_checkpoint(directory / CHECKPOINT, model, config, vocabulary, feature_dim)


def build_trainer(
    config: PipelineConfig,
    name: str,
    vocabulary: LabelVocabulary,
    label_source: str = "observed",
    flags: str | None = None,
    holdout_fold: int | None = None,
    seeds: list[int] | None = None,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The `TorchTrainer` of one run under `config.ray.storage_path/name`: `config.ray.num_workers` DDP
    workers, or with `seeds` one worker per seed, each training its own model (see the module docstring)."""
    ray_config = config.ray
    run_config = config.core()
    # Train workers run in their own working directory: ship local data paths as absolute paths.
    data = run_config.data
    data.manifest = absolute(data.manifest)
    data.test_manifest = data.test_manifest and absolute(data.test_manifest)
    storage_path = absolute(ray_config.storage_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": run_config.model_dump(),
            "vocabulary": list(vocabulary.names),
            "label_source": label_source,
            "flags": flags and absolute(flags),
            "torch_threads": ray_config.torch_threads,
            "holdout": None
            if holdout_fold is None
            else {"folds": config.flagging.crossfit_folds, "fold": holdout_fold, "seed": config.train.seed},
            "seeds": seeds,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=len(seeds) if seeds else ray_config.num_workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker={"CPU": ray_config.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=ray_config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def train_distributed(
    config: PipelineConfig,
    name: str,
    vocabulary: LabelVocabulary,
    label_source: str = "observed",
    flags: str | None = None,
    holdout_fold: int | None = None,
) -> TrainResult:
    """Train with Ray Train under `config.ray.storage_path/name`; rerunning the same name resumes.

    With `holdout_fold`, train without that fold of `raymlc.flagging.crossfit_folds(n_train,
    config.flagging.crossfit_folds, config.train.seed)` (a cross-fitting teacher).
    """
    result = build_trainer(config, name, vocabulary, label_source, flags, holdout_fold).fit()
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory, TRAIN_STATE), map_location="cpu", weights_only=True)
    return TrainResult(result.checkpoint, state["history"])
