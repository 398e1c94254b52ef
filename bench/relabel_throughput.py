"""Relabel throughput: clips/s with 1 and 2 tagger actors, on one 2-CPU node and on a 2-node local cluster.

    .venv/bin/python bench/relabel_throughput.py [--clips 400] [--bundle DIR]

Relabels the same demo manifest (3-second clips) with `raymlc.distributed.relabel.relabel_manifest` in four
cells: {1 node × 2 CPUs, 2 nodes × 1 CPU (`ray.cluster_utils.Cluster`, in this process)} × {1, 2 actors}.
The time covers the whole run (actor start, decode, tagging, commits, finalize). Without `--bundle` it
trains the demo CNN architecture for one epoch on a few clips (throughput does not depend on accuracy).
Every cell must write the same parts byte for byte. Prints the table with ratios to the first cell and
writes bench/results/relabel_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from raymlc.config import DemoConfig, RelabelConfig, load_config
from raymlc.data.demo import make_demo
from raymlc.training import BUNDLE, train_local

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def train_bundle(workdir: Path) -> str:
    """The demo CNN (configs/demo.yaml architecture), one epoch on 64 clips."""
    manifest = make_demo(workdir / "train-demo", DemoConfig(n_train=64, n_val=16, n_test=16, seed=3))
    config = load_config(REPO / "configs" / "demo.yaml")
    config.data.manifest = str(manifest)
    config.train.epochs = 1
    config.thresholds.epochs = 20
    train_local(config.core(), workdir / "model", log=lambda _: None)
    return str(workdir / "model" / BUNDLE)


def run_cell(bundle: str, manifest: Path, output: Path, config: RelabelConfig) -> float:
    """Seconds for one complete relabel run into a new folder."""
    from raymlc.distributed.relabeling import relabel_manifest

    started = time.perf_counter()
    relabel_manifest(bundle, str(manifest), str(output), config, log=lambda _: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=400, help="demo clips to relabel (default 400)")
    parser.add_argument("--bundle", help="tagger bundle to use (default: train a one-epoch demo CNN)")
    parser.add_argument("--rows-per-part", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import ray.data
    from ray.cluster_utils import Cluster

    workdir = Path(tempfile.mkdtemp(prefix="raymlc-relabel-bench-"))
    bundle = args.bundle or train_bundle(workdir)
    manifest = make_demo(workdir / "demo", DemoConfig(n_train=args.clips - 2, n_val=1, n_test=1, seed=7))
    print(f"relabeling {args.clips} 3-second clips with {bundle}", flush=True)

    def start(layout: str) -> Cluster | None:
        """Ray for one layout: in-process local Ray, or a 2-node `Cluster` this process connects to."""
        if layout.startswith("1"):
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            return None
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        return cluster

    cells, checksums = [], set()
    for layout in ("1 node x 2 CPUs", "2 nodes x 1 CPU"):
        for attempt in range(3):  # a heavily loaded machine can miss Ray's 30-second node start-up deadline
            try:
                cluster = start(layout)
                break
            except Exception as error:  # Ray raises a bare Exception on start-up timeouts
                print(f"{layout}: Ray did not start (attempt {attempt + 1}): {error}", flush=True)
                ray.shutdown()
        else:
            raise SystemExit(f"{layout}: Ray did not start in 3 attempts")
        ray.data.DataContext.get_current().enable_progress_bars = False
        for actors in (1, 2):
            config = RelabelConfig(
                rows_per_part=args.rows_per_part,
                batch_size=args.batch_size,
                min_actors=actors,
                max_actors=actors,
                cpus_per_actor=0.75,
                decode_cpus=0.25,
            )
            load = os.getloadavg()[0]
            output = workdir / f"out-{len(cells)}"
            seconds = run_cell(bundle, manifest, output, config)
            checksums.add(tuple(part["sha256"] for part in json.loads((output / "_parts.json").read_text())["parts"]))
            cells.append(
                {
                    "layout": layout,
                    "actors": actors,
                    "clips": args.clips,
                    "seconds": round(seconds, 2),
                    "clips_per_s": round(args.clips / seconds, 2),
                    "load_before": round(load, 1),
                    "load_after": round(os.getloadavg()[0], 1),
                }
            )
            print(json.dumps(cells[-1]), flush=True)
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()

    base = cells[0]["clips_per_s"]
    print("\n| cluster | actors | clips/s | ratio | seconds | load avg (before/after) |\n|---|---|---|---|---|---|")
    for cell in cells:
        print(
            f"| {cell['layout']} | {cell['actors']} | {cell['clips_per_s']:.1f} | {cell['clips_per_s'] / base:.2f} "
            f"| {cell['seconds']:.1f} | {cell['load_before']} / {cell['load_after']} |"
        )
    print(f"identical parts in every cell: {len(checksums) == 1}")
    RESULTS.mkdir(exist_ok=True)
    result = {"cells": cells, "identical_outputs": len(checksums) == 1, "bundle": bundle, "cpus": os.cpu_count()}
    (RESULTS / "relabel_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
