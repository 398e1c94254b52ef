"""Worker-count invariance: the demo teacher trained in one process, with 1 Ray Train worker and with 2.

    .venv/bin/python bench/worker_invariance.py [--seeds 0 1 2 3 4] [--epochs 12]

Every run trains configs/demo.yaml's CNN on the observed labels of the demo manifest (`raymlc make-demo`,
written to runs/demo-data when absent) with the same global batch (train.batch_size = 32), seed by seed:
`single` is the streaming single-process loop of `raymlc train` (`raymlc.training.fit` over `ManifestClips`,
2 torch threads), `ray-1` and `ray-2` are `raymlc.distributed.training.train_distributed` with 1 and 2 DDP
workers (1 torch thread each). Test mAP is on the clean test labels, as `raymlc pipeline` reports it. Prints
mean ± sd per mode and the largest difference of means (goal: ≤ 0.01), steps per epoch and wall time;
writes bench/results/worker_invariance.json.
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
from scipy.special import expit

from raymlc.config import DemoConfig, PipelineConfig, load_config
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import load_manifest_table, load_split, readable_rows
from raymlc.data.demo import make_demo
from raymlc.data.stream import ManifestClips
from raymlc.metrics import summarize
from raymlc.scoring import predict
from raymlc.training import fit, new_model, train_plan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODES = ("single", "ray-1", "ray-2")


def test_map(model: torch.nn.Module, config: PipelineConfig, test) -> float:
    logits, _ = predict(model.eval(), test, config.train.eval_batch_size, config.window_samples)
    return float(summarize(test.targets, expit(logits))["map"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None, help="default: configs/demo.yaml's")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    from raymlc.distributed.training import train_distributed

    manifest = REPO / "runs" / "demo-data" / "manifest.parquet"
    if not manifest.exists():
        make_demo(manifest.parent, DemoConfig())
    base = load_config(REPO / "configs" / "demo.yaml")
    base.data.manifest = str(manifest)
    if args.epochs:
        base.train.epochs = args.epochs
    table = load_manifest_table(base)
    vocabulary = LabelVocabulary.from_table(table)
    table, _ = readable_rows(table, base)
    splits = {name: table.filter(pc.equal(table.column("split"), name)) for name in ("train", "val", "test")}
    test = load_split(table, vocabulary, "test", base, label_source="clean")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as storage:
        for seed in args.seeds:
            for mode in MODES:
                config = base.model_copy(deep=True)
                config.train.seed = seed
                started = time.perf_counter()
                if mode == "single":
                    torch.set_num_threads(2)
                    torch.manual_seed(seed)
                    model = new_model(config, len(vocabulary))
                    source = ManifestClips(splits["train"], vocabulary, config)
                    fit(model, source, train_plan(config, splits["train"], vocabulary), None, config.train, None)
                else:
                    config.ray.num_workers = int(mode.split("-")[1])
                    config.ray.storage_path = storage
                    model = train_distributed(config, f"{mode}-seed{seed}", vocabulary, splits).load_model()
                seconds[mode].append(time.perf_counter() - started)
                results[mode].append(test_map(model, config, test))
                print(
                    f"seed {seed} {mode:>6}: test mAP {results[mode][-1]:.4f} ({seconds[mode][-1]:.0f} s)", flush=True
                )
    ray.shutdown()
    means = {mode: float(np.mean(values)) for mode, values in results.items()}
    steps = train_plan(base, splits["train"], vocabulary).steps
    print(f"\n{'mode':>7}  {'mean mAP':>9}  {'sd':>6}  {'s/run':>6}   ({steps} steps per epoch)")
    for mode in MODES:
        print(f"{mode:>7}  {means[mode]:9.4f}  {np.std(results[mode]):6.4f}  {np.mean(seconds[mode]):6.0f}")
    spread = max(means.values()) - min(means.values())
    print(f"largest difference of means: {spread:.4f} (goal <= 0.01)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "seeds": args.seeds,
        "epochs": base.train.epochs,
        "test_map": results,
        "seconds": seconds,
        "spread": spread,
    }
    (RESULTS / "worker_invariance.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
