"""Ray Train: the core training loop (`raymlc.training`) under a `TorchTrainer` with DDP and checkpoints.

The driver probes every clip on the cluster before any training (`readable_splits`) and hands the
workers the train and val rows (paths and labels, through the object store). Each of W workers streams its
batch_size / W share of every global batch of the epoch plan (`raymlc.data.stream`) from its own reader
actors that decode only each slot's crop, in plan order (`worker_batches`), so the same config takes
the same steps on the same clips and crops at any worker count. Rank 0 evaluates on val and writes a
checkpoint every epoch (model, optimizer, epoch, history); a replaced worker, or a rerun with the same name
and storage path, resumes from the newest checkpoint and rebuilds the stream from that epoch.

The stream is built in each worker from plain Ray actors, not from a Ray Data dataset passed as `datasets=`:
Ray Train's split of a dataset hands blocks to whichever worker asks first and restarts it from the top
after a failure, while the plan fixes which rows make each global batch and where an epoch starts; and a
Ray Data executor inside the worker, once its output buffer is full, polls without waiting and holds the
GIL the training step needs (measured here on a small MLP, batch 16: 110 ms per step against 0.5 ms with
tasks on one worker, 3.5 ms on two). Actors rather than a task per block: once the worker pool holds more
processes than CPUs, Ray reaps idle task workers within a second, so every block started a new Python
process (importing torch) and the readers used more CPU than the training steps.

With `seeds` (a sweep trial), worker r instead trains its own model with seed `seeds[r]` on the whole
train split (no DDP); every worker evaluates on val and rank 0 reports the mean (and std) over seeds.
A sweep's objective that needs the trained model (adaptive-threshold macro-F1) is computed there too, after
the last epoch (`final_objective`), so that every result of a Tune trial reaches Tune through its
`TuneReportCallback`: a trial function that also calls `ray.tune.report` after `fit()` races the callback's
queue and can deadlock the trial (seen as a sweep that never ends).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.train
import torch
from ray.train.torch import TorchTrainer, prepare_model

from raymlc.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from raymlc.config import PipelineConfig, RayTrainConfig, TaggerConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import (
    SPLITS,
    SplitData,
    feature_matrix,
    load_split,
    probe_rows,
    readable_rows,
)
from raymlc.data.files import absolute
from raymlc.data.stream import EpochPlan, ManifestClips
from raymlc.flagging import FlagResult, crossfit_folds, flag_mask_for, load_flags
from raymlc.scoring import evaluate
from raymlc.training import Stepper, cosine_lr, make_optimizer, new_model, train_plan

TRAIN_STATE = "train_state.pt"
# A metric of a trained model computed by the workers after the last epoch (a sweep trial's objective):
# (model in eval mode, loaded train split, val split, config, train loss mask or None) -> value.
FinalObjective = Callable[[torch.nn.Module, SplitData, SplitData, TaggerConfig, np.ndarray | None], float]
BATCHES_PER_BLOCK = 8  # worker batches per read call
PROBE_ROWS = 1024  # clips per probe task
PROBE_SCHEMA = pa.schema([(name, pa.string()) for name in ("clip_id", "audio", "reason")])


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


def flag_mask(flags: FlagResult, train: SplitData, shard: pa.Table, shard_rows: np.ndarray) -> np.ndarray:
    """Loss mask [N, C] of the loaded clips of `shard` (train-split positions `shard_rows`): 0 where `flags`
    flags (row, class), else 1."""
    position = dict(zip(shard.column("clip_id").to_pylist(), shard_rows.tolist(), strict=True))
    rows = np.array([position[clip_id] for clip_id in train.clip_ids], dtype=np.int64)
    return (~flag_mask_for(rows, flags)).astype(np.float32)


class SlotReader:
    """A Ray actor that reads worker `rank`'s share of the epoch plan: each slot's crop, targets and loss mask
    (`ManifestClips.read`) and its train row. One process for the whole run (a task per block would start
    worker processes again and again once the pool's idle ones are reaped), the rows and flags fetched once."""

    def __init__(self, loop_config: dict, plan: EpochPlan, rank: int, world_size: int) -> None:
        config = TaggerConfig.model_validate(loop_config["config"])
        flags = ray.get(loop_config["flags"]) if loop_config["flags"] is not None else None
        vocabulary = LabelVocabulary(loop_config["vocabulary"])
        train_rows = ray.get(loop_config["train_rows"])
        self.source = ManifestClips(train_rows, vocabulary, config, loop_config["label_source"], flags)
        self.plan, self.rank, self.world_size = plan, rank, world_size
        self.share = plan.batch_size // world_size
        self.epoch, self.rows, self.keys = -1, np.empty(0, np.int64), np.empty(0, np.int64)

    def read(self, epoch: int, positions: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The batches at `positions` of this worker's slots of `epoch`."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.rows, self.keys = self.plan.worker_slots(epoch, self.rank, self.world_size)
        batches = (positions[start : start + self.share] for start in range(0, len(positions), self.share))
        return [self.source.read(self.rows[batch], self.keys[batch]) | {"rows": self.rows[batch]} for batch in batches]


def worker_batches(
    loop_config: dict, plan: EpochPlan, rank: int, world_size: int, first_epoch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Worker `rank`'s batches of every epoch from `first_epoch` on, in plan order: `BATCHES_PER_BLOCK` at a
    time from `ray.readers_per_worker` `SlotReader` actors (`ray.cpus_per_reader` CPUs each; on a cluster they
    run on any node), one block per reader in flight ahead of the training step."""
    ray_config = RayTrainConfig.model_validate(loop_config["ray"])
    actor = ray.remote(SlotReader).options(num_cpus=ray_config.cpus_per_reader, max_restarts=3, max_task_retries=3)
    readers = [actor.remote(loop_config, plan, rank, world_size) for _ in range(ray_config.readers_per_worker)]
    per_epoch = plan.steps * (plan.batch_size // world_size)
    block = plan.batch_size // world_size * BATCHES_PER_BLOCK
    blocks = (
        (epoch, np.arange(start, min(start + block, per_epoch)))
        for epoch in range(first_epoch, plan_epochs(loop_config))
        for start in range(0, per_epoch, block)
    )
    pending: deque = deque()
    for index, (epoch, positions) in enumerate(blocks):
        pending.append(readers[index % len(readers)].read.remote(epoch, positions))
        if len(pending) > len(readers):
            yield from ray.get(pending.popleft())
    while pending:
        yield from ray.get(pending.popleft())


def plan_epochs(loop_config: dict) -> int:
    return int(loop_config["config"]["train"]["epochs"])


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Train worker; `loop_config` holds the run config, vocabulary, the train and val rows
    (object refs) and optional flags."""
    config = TaggerConfig.model_validate(loop_config["config"])
    vocabulary = LabelVocabulary(loop_config["vocabulary"])
    torch.set_num_threads(loop_config["ray"]["torch_threads"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if pid_dir := os.environ.get("RAYMLC_TRAIN_PID_DIR"):  # lets tests find and kill a worker
        Path(pid_dir, f"{context.get_experiment_name()}-rank{rank}.pid").write_text(str(os.getpid()))

    seeds = loop_config.get("seeds")
    if seeds:  # one model per worker: the whole global batch on each
        config.train.seed = seeds[rank]
        loop_config = loop_config | {"config": config.model_dump()}
    torch.manual_seed(config.train.seed)  # the same initial weights on every run (DDP broadcasts rank 0's)
    train_rows = ray.get(loop_config["train_rows"])
    plan = train_plan(config, train_rows, vocabulary)
    evaluates = rank == 0 or bool(seeds)
    val_rows = ray.get(loop_config["val_rows"]) if evaluates else None
    val = load_split(val_rows, vocabulary, None, config, loop_config["label_source"]) if evaluates else None
    state_file = seed_state(rank) if seeds else TRAIN_STATE

    features = None if config.is_audio else feature_matrix(train_rows)  # an MLP: standardized the same everywhere
    feature_dim = None if features is None else features.shape[1]
    model = new_model(config, len(vocabulary), features)
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
    stepper = Stepper(model, optimizer, config.train)
    window = config.window_samples
    stream_rank, stream_world = (0, 1) if seeds else (rank, world_size)
    stream = worker_batches(loop_config, plan, stream_rank, stream_world, start_epoch)
    trace = os.environ.get("RAYMLC_TRAIN_TRACE_DIR")  # lets tests see the rows of each worker's batches
    final_objective = loop_config.get("final_objective") if evaluates else None

    for epoch in range(start_epoch, config.train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.train, epoch)
        torch.manual_seed(config.train.seed * 1_000_003 + epoch * 1009 + rank)  # dropout, SpecAugment
        seen: list[np.ndarray] = []  # with `trace`: copies, since a view would pin its whole block in the store
        batches = itertools.islice(stream, plan.steps)
        if trace:
            batches = (seen.append(batch["rows"].copy()) or batch for batch in batches)
        started = time.perf_counter()
        record = {"epoch": epoch + 1, "train_loss": stepper.epoch(batches)}
        record["train_seconds"] = time.perf_counter() - started
        if trace:
            np.save(Path(trace, f"{context.get_experiment_name()}-rank{rank}-epoch{epoch}.npy"), np.stack(seen))
        if val is not None and len(val):
            scores = evaluate(core, val, config.train.eval_batch_size, window)
            record |= {f"val_{key}": value for key, value in scores.items()}
        if final_objective is not None and epoch + 1 == config.train.epochs:
            record["objective"] = _final_objective(final_objective, core, config, loop_config, vocabulary, val)
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


def _final_objective(
    objective: FinalObjective,
    model: torch.nn.Module,
    config: TaggerConfig,
    loop_config: dict,
    vocabulary: LabelVocabulary,
    val: SplitData,
) -> float:
    """`objective` of the trained model, given the loaded train split and its loss mask (flags)."""
    train_rows = ray.get(loop_config["train_rows"])
    train = load_split(train_rows, vocabulary, None, config, loop_config["label_source"])
    flags = loop_config["flags"]
    mask = None if flags is None else flag_mask(ray.get(flags), train, train_rows, np.arange(len(train_rows)))
    return float(objective(model.eval(), train, val, config, mask))


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
    splits: dict[str, pa.Table],
    label_source: str = "observed",
    flags: str | None = None,
    seeds: list[int] | None = None,
    callbacks: list | None = None,
    final_objective: FinalObjective | None = None,
) -> TorchTrainer:
    """The `TorchTrainer` of one run under `config.ray.storage_path/name` on the `train` and `val` rows of
    `splits` (already checked: `readable_splits`): `config.ray.num_workers` DDP workers sharing every global
    batch, or with `seeds` one worker per seed, each training its own model (see the module docstring).
    With `final_objective`, the last epoch's report also holds its value as `objective`."""
    ray_config = config.ray
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.core().model_dump(),
            "ray": ray_config.model_dump(),
            "vocabulary": list(vocabulary.names),
            "train_rows": ray.put(splits["train"]),
            "val_rows": ray.put(splits["val"]),
            "label_source": label_source,
            "flags": ray.put(load_flags(absolute(flags))) if flags else None,
            "seeds": seeds,
            "final_objective": final_objective,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=len(seeds) if seeds else ray_config.num_workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker={"CPU": ray_config.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=absolute(ray_config.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=ray_config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def _probe_block(block: pa.Table) -> pa.Table:
    return pa.Table.from_pylist(probe_rows(block), schema=PROBE_SCHEMA)


def probe_on_cluster(rows: pa.Table) -> list[dict]:
    """`raymlc.data.dataset.probe_rows` in Ray Data tasks of `PROBE_ROWS` rows each, anywhere on the cluster."""
    columns = rows.select(["clip_id", "audio", "start_s", "end_s"])
    blocks = [columns.slice(start, PROBE_ROWS) for start in range(0, len(columns), PROBE_ROWS)]
    return ray.data.from_arrow(blocks).map_batches(_probe_block, batch_format="pyarrow", batch_size=None).take_all()


def readable_splits(table: pa.Table, config: TaggerConfig) -> tuple[dict[str, pa.Table], list[dict]]:
    """The train/val/test rows of `table` (`load_manifest_table`) without the clips that cannot be read (probed
    on the cluster), and the rejects; `ManifestError` when a split is empty or mostly unreadable."""
    table, rejects = readable_rows(table, config, probe_on_cluster)
    return {name: table.filter(pc.equal(table.column("split"), name)) for name in SPLITS}, rejects


def train_distributed(
    config: PipelineConfig,
    name: str,
    vocabulary: LabelVocabulary,
    splits: dict[str, pa.Table],
    label_source: str = "observed",
    flags: str | None = None,
    holdout_fold: int | None = None,
) -> TrainResult:
    """Train with Ray Train under `config.ray.storage_path/name`; rerunning the same name resumes.

    With `holdout_fold`, train without that fold of `raymlc.flagging.crossfit_folds(n_train,
    config.flagging.crossfit_folds, config.train.seed)` (a cross-fitting teacher).
    """
    if holdout_fold is not None:
        train = splits["train"]
        folds = crossfit_folds(len(train), config.flagging.crossfit_folds, config.train.seed)
        splits = splits | {"train": train.filter(pa.array(folds != holdout_fold))}
    result = build_trainer(config, name, vocabulary, splits, label_source, flags).fit()
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory, TRAIN_STATE), map_location="cpu", weights_only=True)
    return TrainResult(result.checkpoint, state["history"])
