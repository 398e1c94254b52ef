"""`ray job submit` entry point for relabeling a manifest (the same function as `raymlc relabel`).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/relabel.py --bundle /mnt/shared/bundle --input /mnt/shared/manifest.parquet \
        --output /mnt/shared/relabel --config configs/relabel.yaml

The job's driver connects to the cluster through RAY_ADDRESS (set by the job server) and writes --output;
the bundle and the audio must be readable from every node (a shared file system or s3://, gs:// URIs).
Resubmitting the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys

from raymlc.cli import add_relabel_arguments, cmd_relabel
from raymlc.config import ConfigError
from raymlc.data import ManifestError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jobs/relabel.py",
        description="Propose missing labels for a manifest on the Ray cluster of this job (RAY_ADDRESS).",
    )
    add_relabel_arguments(parser)
    args = parser.parse_args(argv)
    args.prog_name = parser.prog
    try:
        return cmd_relabel(args)
    except (ConfigError, ManifestError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
