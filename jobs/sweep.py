"""`ray job submit` entry point for the hyper-parameter sweep (the same function as `raymlc sweep`).

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/sweep.py --config configs/sweep_demo.yaml --output /mnt/shared/runs/sweep-demo

The driver connects through RAY_ADDRESS (set by the job server), or starts Ray in-process without it.
`--output` must be a directory every node sees at the same path: trials read the teacher's scores and
write their flags there. Rerunning the same command resumes an interrupted sweep. Exit status 0 on
success, 2 on a bad config or manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raymlc.config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobs/sweep.py",
        description="Ray Tune sweep (Optuna TPE + ASHA) of the teacher-student student on this job's Ray "
        "cluster: the teacher is trained and scores the train split once, every trial derives its own flags.",
    )
    parser.add_argument("--config", required=True, help="sweep config YAML (e.g. configs/sweep_demo.yaml)")
    parser.add_argument("--output", required=True, help="sweep directory, on a file system shared by all nodes")
    parser.add_argument("--num-trials", type=int, help="override num_trials")
    parser.add_argument("--seeds", type=int, help="override seeds (per configuration)")
    parser.add_argument("--epochs", type=int, help="override the student epochs per trial")
    parser.add_argument("--storage", help="override storage: where Tune keeps its state (path or s3://, gs:// URI)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from raymlc.sweep import load_sweep_config

    try:  # a bad config fails here, before Ray starts
        sweep = load_sweep_config(
            args.config, num_trials=args.num_trials, seeds=args.seeds, epochs=args.epochs, storage=args.storage
        )
    except ConfigError as error:
        print(f"jobs/sweep.py: error: {error}", file=sys.stderr)
        return 2
    from raymlc.data import ManifestError
    from raymlc.distributed.sweep import run_sweep, summary_lines

    try:
        summary = run_sweep(sweep, Path(args.output))
    except (ManifestError, FileNotFoundError) as error:
        print(f"jobs/sweep.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(summary)))
    print(f"wrote {Path(args.output) / 'results.csv'}, best_config.yaml, best_bundle/ and curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
