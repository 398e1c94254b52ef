"""Ingest overhead: Ray Train with 2 workers against a plain single-process PyTorch loop, same clips and cores.

    .venv/bin/python bench/ingest_overhead.py [--epochs 3] [--batch-size 32]

Both train configs/demo.yaml's CNN on the demo manifest (runs/demo-data, written when absent) for `--epochs`
epochs of the same epoch plan (global batch `--batch-size`). The plain loop decodes each batch's crops
inline (`ManifestClips.read`, no read-ahead) and steps with 2 torch threads. Ray Train runs 2 DDP workers
with 1 torch thread each, their batches read by Ray tasks (`raymlc.distributed.training`), val evaluation
off. Samples/s count the training steps of every epoch after the first (start-up and warm-up excluded); the
wall time of each whole run is printed beside it. Goal: Ray ÷ plain ≥ 0.9. Writes
bench/results/ingest_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from raymlc.config import DemoConfig, load_config
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import load_manifest_table
from raymlc.data.demo import make_demo
from raymlc.data.stream import ManifestClips
from raymlc.training import Stepper, make_optimizer, new_model, train_plan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def plain_loop(config, train_rows, vocabulary) -> list[float]:
    """Seconds of each epoch of a plain loop: read a batch, step, repeat."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = new_model(config, len(vocabulary))
    stepper = Stepper(model, make_optimizer(model, config.train), config.train)
    source, plan = ManifestClips(train_rows, vocabulary, config), train_plan(config, train_rows, vocabulary)
    seconds = []
    for epoch in range(config.train.epochs):
        rows, keys = plan.slots(epoch)
        started = time.perf_counter()
        batches = (
            source.read(rows[i : i + plan.batch_size], keys[i : i + plan.batch_size])
            for i in range(0, len(rows), plan.batch_size)
        )
        stepper.epoch(batches)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    from raymlc.distributed.training import train_distributed

    manifest = REPO / "runs" / "demo-data" / "manifest.parquet"
    if not manifest.exists():
        make_demo(manifest.parent, DemoConfig())
    config = load_config(REPO / "configs" / "demo.yaml")
    config.data.manifest = str(manifest)
    config.train.epochs, config.train.batch_size = args.epochs, args.batch_size
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    splits = {name: table.filter(pc.equal(table.column("split"), name)) for name in ("train", "val")}
    samples = train_plan(config, splits["train"], vocabulary).steps * args.batch_size

    started = time.perf_counter()
    plain = plain_loop(config, splits["train"], vocabulary)
    plain_wall = time.perf_counter() - started
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        config.ray.storage_path = storage
        started = time.perf_counter()
        splits["val"] = splits["val"].slice(0, 0)  # no evaluation: only the training steps count
        result = train_distributed(config, "ingest", vocabulary, splits)
        ray_wall = time.perf_counter() - started
    ray.shutdown()
    ray_seconds = [record["train_seconds"] for record in result.history]
    rates = {
        "plain": samples * (args.epochs - 1) / sum(plain[1:]),
        "ray": samples * (args.epochs - 1) / sum(ray_seconds[1:]),
    }
    print(f"{'loop':>6}  {'samples/s':>9}  {'wall s':>7}  epochs (s)")
    print(f"{'plain':>6}  {rates['plain']:9.1f}  {plain_wall:7.1f}  {np.round(plain, 1).tolist()}")
    print(f"{'ray':>6}  {rates['ray']:9.1f}  {ray_wall:7.1f}  {np.round(ray_seconds, 1).tolist()}")
    print(f"ray / plain: {rates['ray'] / rates['plain']:.2f} (goal >= 0.9)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "samples_per_s": rates,
        "epoch_seconds": {"plain": plain, "ray": ray_seconds},
        "wall_s": {"plain": plain_wall, "ray": ray_wall},
    }
    (RESULTS / "ingest_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
