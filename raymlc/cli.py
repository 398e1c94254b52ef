"""`raymlc` command line: one subcommand per stage, `--help` on each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from raymlc.config import ConfigError, DemoConfig, load_config
from raymlc.data import ManifestError

SUMMARY_KEYS = ("map", "d_prime", "lwlrap", "micro_f1", "macro_f1")


def format_metrics(name: str, metrics: dict) -> str:
    """One line: `name: mAP 0.912  d' 2.71 ...`."""
    labels = {
        "map": "mAP",
        "d_prime": "d'",
        "lwlrap": "lwlrap",
        "micro_f1": "micro-F1",
        "macro_f1": "macro-F1",
    }
    return f"{name}: " + "  ".join(f"{labels[key]} {metrics[key]:.3f}" for key in SUMMARY_KEYS)


def cmd_make_demo(args: argparse.Namespace) -> None:
    from raymlc.data.demo import make_demo

    overrides = {"seed": args.seed, "drop_fraction": args.drop_fraction, "removal": args.removal}
    config = load_config(args.config, DemoConfig) if args.config else DemoConfig()
    try:
        config = DemoConfig.model_validate(
            config.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        )
    except ValidationError as error:
        raise ConfigError(f"invalid demo option:\n{error}") from None

    def progress(done: int, total: int) -> None:
        print(f"\rdemo: {done}/{total} clips", end="", file=sys.stderr, flush=True)

    manifest = make_demo(args.output, config, progress=progress)
    print(file=sys.stderr)
    print(f"wrote {manifest}")


def cmd_train(args: argparse.Namespace) -> None:
    from raymlc.local import METRICS, train_local

    config = load_config(args.config)
    if args.manifest:
        config.data.manifest = args.manifest
    metrics = train_local(config, Path(args.output))
    print(format_metrics("test", metrics["test"]))
    print(f"wrote {Path(args.output) / METRICS}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from raymlc.local import METRICS, evaluate_local

    config = load_config(args.config) if args.config else None
    metrics = evaluate_local(Path(args.checkpoint), args.split, Path(args.output), config)
    print(format_metrics(args.split, metrics[args.split]))
    print(f"wrote {Path(args.output) / METRICS}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raymlc", description="Multi-label audio tagging with incomplete labels, on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("make-demo", help="write the built-in demo dataset (audio + manifest.parquet)")
    demo.add_argument(
        "--output", required=True, help="directory to write DIR/manifest.parquet and DIR/audio/"
    )
    demo.add_argument("--config", help="YAML file with DemoConfig fields (sizes, events, removal)")
    demo.add_argument("--seed", type=int, help="random seed (default 0)")
    demo.add_argument("--drop-fraction", type=float, help="fraction of train positives removed (default 0.3)")
    demo.add_argument("--removal", choices=["structured", "random"], help="how positives are removed")
    demo.set_defaults(run=cmd_make_demo)

    train = commands.add_parser("train", help="train a tagger locally (one process) and write metrics.json")
    train.add_argument("--config", required=True, help="run config YAML (see configs/)")
    train.add_argument("--output", required=True, help="run directory for checkpoint.pt and metrics.json")
    train.add_argument("--manifest", help="override data.manifest from the config")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint on one split and write metrics.json"
    )
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `raymlc train`")
    evaluate.add_argument("--output", required=True, help="directory for metrics.json")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score")
    evaluate.add_argument("--config", help="run config whose data section replaces the checkpoint's")
    evaluate.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, ManifestError, FileNotFoundError) as error:
        print(f"raymlc {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
