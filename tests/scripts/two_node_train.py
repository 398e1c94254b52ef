"""A two-node Ray cluster on this machine training the demo CNN with 2 Train workers, one per node.

Run in its own process by tests/test_cluster.py: each node has 1 CPU and each Train worker asks for 1 CPU,
so the workers must land on different nodes. Every worker process records its node id (a runtime-env setup
hook, `{pid}.node`); Train workers write their pid into RAYMLC_TRAIN_PID_DIR. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import ray
from private_cluster import private_cluster

from raymlc.config import PipelineConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import load_manifest_table
from raymlc.distributed.training import readable_splits, train_distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--storage", required=True, help="Ray Train storage path, shared by both nodes")
    parser.add_argument("--node-dir", required=True, help="where each worker process writes {pid}.node")
    args = parser.parse_args()
    node_dir = args.node_dir

    def record_node() -> None:
        Path(node_dir, f"{os.getpid()}.node").write_text(ray.get_runtime_context().get_node_id())

    with private_cluster(num_cpus=1, object_store_mb=80, worker_nodes=1) as cluster:
        ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": record_node}, log_to_driver=False)
        config = PipelineConfig.model_validate(
            {
                "data": {"manifest": args.manifest},
                "frontend": {"window_seconds": 1.0, "n_mels": 32},
                "model": {"channels": [8, 16], "embedding_dim": 16},
                "train": {"epochs": 1, "batch_size": 16},
                "ray": {
                    "num_workers": 2,
                    "cpus_per_worker": 0.75,
                    "cpus_per_reader": 0.25,
                    "storage_path": args.storage,
                    "max_failures": 0,
                },
            }
        )
        table = load_manifest_table(config)
        vocabulary = LabelVocabulary.from_table(table)
        splits, _ = readable_splits(table, config)
        result = train_distributed(config, "two-nodes", vocabulary, splits)
        nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
        print(json.dumps({"nodes": nodes, "checkpoint": result.checkpoint.path, "history": result.history}))


if __name__ == "__main__":
    main()
