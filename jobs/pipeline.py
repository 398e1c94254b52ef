"""`ray job submit` entry point for the teacher–student pipeline (the same function as `raymlc pipeline`).

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/pipeline.py --config configs/demo.yaml --output /mnt/shared/runs/demo

The job's driver runs on the head node and connects to the cluster through RAY_ADDRESS (set by the job
server). `--output` is a local directory that every node must see at the same path (a shared file system):
Train workers and Ray Data actors read the teacher checkpoint and the flags from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raymlc.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobs/pipeline.py",
        description="Teacher -> scores -> flags -> student on the Ray cluster of this job (RAY_ADDRESS). "
        "Rerunning with the same --output skips finished stages.",
    )
    parser.add_argument("--config", required=True, help="pipeline config YAML (e.g. configs/demo.yaml)")
    parser.add_argument("--output", required=True, help="run directory, on a file system shared by all nodes")
    parser.add_argument("--manifest", help="override data.manifest (local path or s3://, gs:// URI)")
    parser.add_argument(
        "--storage-path", help="override ray.storage_path: where Ray Train keeps checkpoints (path or s3://, gs:// URI)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)  # a bad config fails here, before Ray and torch are imported
    except ConfigError as error:
        print(f"jobs/pipeline.py: error: {error}", file=sys.stderr)
        return 2
    if args.manifest:
        config.data.manifest = args.manifest
    if args.storage_path:
        config.ray.storage_path = args.storage_path
    from raymlc.data import ManifestError
    from raymlc.distributed.teacher_student import run_pipeline, summary_lines

    try:
        metrics = run_pipeline(config, Path(args.output))
    except (ManifestError, FileNotFoundError) as error:
        print(f"jobs/pipeline.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(["test metrics (clean test labels):", *summary_lines(metrics)]))
    print(f"wrote {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
