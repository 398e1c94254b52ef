"""`raymlc` command line: one subcommand per stage, `--help` on each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raymlc.config import ConfigError, DemoConfig, MixtureConfig, ServeConfig, load_config, load_with_overrides
from raymlc.data import ManifestError
from raymlc.metrics import SUMMARY_KEYS, SUMMARY_NAMES

EXTRAS = ("ray", "optuna", "fastapi", "starlette", "uvicorn", "prometheus_client")  # modules of the extras


def format_metrics(name: str, metrics: dict) -> str:
    """One line: `name: mAP 0.912  d' 2.71 ...`."""
    return f"{name}: " + "  ".join(f"{SUMMARY_NAMES[key]} {metrics[key]:.3f}" for key in SUMMARY_KEYS)


def cmd_make_demo(args: argparse.Namespace) -> None:
    from raymlc.data.demo import make_demo

    overrides = {"seed": args.seed, "drop_fraction": args.drop_fraction, "removal": args.removal}
    config = load_with_overrides(args.config, DemoConfig, **overrides)

    def progress(done: int, total: int) -> None:
        print(f"\rdemo: {done}/{total} clips", end="", file=sys.stderr, flush=True)

    manifest = make_demo(args.output, config, progress=progress)
    print(file=sys.stderr)
    print(f"wrote {manifest}")


def cmd_make_mixtures(args: argparse.Namespace) -> None:
    from raymlc.data.mixtures import make_fsdd_mixtures

    overrides = {"seed": args.seed, "drop_fraction": args.drop_fraction, "removal": args.removal}
    config = load_with_overrides(args.config, MixtureConfig, **overrides)

    def progress(done: int, total: int) -> None:
        print(f"\rmixtures: {done}/{total} clips", end="", file=sys.stderr, flush=True)

    manifest = make_fsdd_mixtures(args.recordings, args.output, config, progress=progress)
    print(file=sys.stderr)
    print(f"wrote {manifest}")


def cmd_train(args: argparse.Namespace) -> None:
    from raymlc.scoring import METRICS
    from raymlc.training import BUNDLE, train_local

    config = load_config(args.config)
    if args.manifest:
        config.data.manifest = args.manifest
    if args.label_source:
        config.data.label_source = args.label_source
    metrics = train_local(config, Path(args.output))
    print(format_metrics("test", metrics["test"]))
    print(f"wrote {Path(args.output) / METRICS} and the tagger bundle {Path(args.output) / BUNDLE}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    from raymlc.distributed.teacher_student import run_pipeline, summary_lines

    config = load_config(args.config)
    if args.manifest:
        config.data.manifest = args.manifest
    output = Path(args.output)
    metrics = run_pipeline(config, output)
    print("\n".join(["test metrics (clean test labels):", *summary_lines(metrics)]))
    print(f"wrote {output / 'metrics.json'}, {output / 'report.md'} and the student's bundle {output / 'bundle'}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from raymlc.sweep import load_sweep_config

    sweep = load_sweep_config(
        args.config, num_trials=args.num_trials, seeds=args.seeds, epochs=args.epochs, storage=args.storage
    )
    from raymlc.distributed.sweep import run_sweep, summary_lines

    output = Path(args.output)
    summary = run_sweep(sweep, output)
    print("\n".join(summary_lines(summary)))
    print(f"wrote {output / 'results.csv'}, best_config.yaml, best_bundle/, curve.png and summary.json")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from raymlc.scoring import METRICS, evaluate_checkpoint

    config = load_config(args.config) if args.config else None
    metrics = evaluate_checkpoint(Path(args.checkpoint), args.split, Path(args.output), config)
    print(format_metrics(args.split, metrics[args.split]))
    print(f"wrote {Path(args.output) / METRICS}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def format_tags(path: str, names: tuple[str, ...], result, row: int, as_json: bool) -> str:
    """One output line for clip `row` of a `TagResult`: JSON over all labels, or the present tags."""
    from raymlc.serving.protocol import label_entries

    scores, thresholds, present = result.logits[row], result.thresholds[row], result.present[row]
    if as_json:
        return json.dumps(
            {"file": path, "labels": label_entries(names, scores, thresholds, present, range(len(names)))}
        )
    tags = [f"{names[c]} ({scores[c]:.2f} > {thresholds[c]:.2f})" for c in present.nonzero()[0]]
    return f"{path}: {', '.join(tags) or '(no tags)'}"


def cmd_predict(args: argparse.Namespace) -> int:
    from raymlc.bundle import BundleError, load_bundle
    from raymlc.data.audio import AudioError

    try:
        tagger = load_bundle(args.bundle)
    except BundleError as error:
        print(f"raymlc predict: error: {error}", file=sys.stderr)
        return 2
    failed = 0
    for start in range(0, len(args.files), args.batch_size):
        paths = args.files[start : start + args.batch_size]
        inputs, errors = {}, {}
        for path in paths:
            try:
                inputs[path] = tagger.read_input(path)
            except AudioError as error:
                errors[path] = error.reason
            except (OSError, ValueError) as error:
                errors[path] = str(error)
        result = tagger.tag(list(inputs.values())) if inputs else None
        rows = {path: row for row, path in enumerate(inputs)}
        for path in paths:
            if path in errors:
                failed += 1
                print(f"raymlc predict: error: {path}: {errors[path]}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"file": path, "error": errors[path]}), flush=True)
            else:
                print(format_tags(path, tagger.vocabulary.names, result, rows[path], args.json), flush=True)
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from raymlc.bundle import BundleError
    from raymlc.distributed.serving import run_local

    config = ServeConfig(
        bundle_uri=args.bundle,
        max_batch_size=args.max_batch_size,
        max_duration_s=args.max_duration_s,
        token_file=args.token_file,
    )
    try:
        run_local(config, args.host, args.port, args.max_replicas)
    except (BundleError, OSError, ValueError) as error:
        print(f"raymlc serve: error: {error}", file=sys.stderr)
        return 2
    return 0


def add_relabel_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `raymlc relabel` (shared with jobs/relabel.py)."""
    parser.add_argument("--bundle", required=True, help="tagger bundle directory (local path or s3://, gs:// URI)")
    parser.add_argument("--input", required=True, help="manifest to relabel (never modified)")
    parser.add_argument("--output", required=True, help="new directory for the results; rerun the same to resume")
    parser.add_argument("--config", help="RelabelConfig YAML (e.g. configs/relabel.yaml); defaults without one")
    parser.add_argument("--format", help="manifest format when the extension does not tell (csv, parquet, ...)")
    parser.add_argument("--min-actors", type=positive_int, help="override min_actors of the inference pool")
    parser.add_argument("--max-actors", type=positive_int, help="override max_actors of the inference pool")
    parser.add_argument("--rows-per-part", type=positive_int, help="override rows_per_part")


def cmd_relabel(args: argparse.Namespace) -> int:
    from raymlc.bundle import BundleError
    from raymlc.distributed.relabeling import RelabelError, relabel_config, relabel_manifest

    config = relabel_config(
        args.config, min_actors=args.min_actors, max_actors=args.max_actors, rows_per_part=args.rows_per_part
    )
    try:
        relabel_manifest(
            args.bundle, args.input, args.output, config, args.format, log=lambda line: print(line, flush=True)
        )
    except (BundleError, RelabelError) as error:
        print(f"{args.prog_name}: error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    import uvicorn

    from raymlc.reviewing import DecisionLog, ReviewError, check_reviewer, read_queue
    from raymlc.serving.auth import load_token
    from raymlc.serving.review_app import build_review_app

    try:
        queue = read_queue(args.queue)
        app = build_review_app(
            queue,
            DecisionLog(Path(args.decisions or Path(args.queue) / "review")),
            check_reviewer(args.reviewer),
            load_token(args.token_file),
        )
    except (ReviewError, OSError, ValueError) as error:
        print(f"raymlc review: error: {error}", file=sys.stderr)
        return 2
    print(f"reviewing {len(queue)} items of {args.queue} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_apply_review(args: argparse.Namespace) -> int:
    from raymlc.reviewing import OUTCOMES, ReviewError, write_reviewed_manifest

    try:
        summary = write_reviewed_manifest(args.input, Path(args.decisions), Path(args.output), args.format)
    except ReviewError as error:
        print(f"raymlc apply-review: error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{summary[key]} {key}" for key in OUTCOMES)
    print(f"wrote {args.output}: {counts} over {summary['reviewed_clips']} clips ({summary['conflict_rule']})")
    if summary["unknown_clips"]:
        print(f"{summary['unknown_clips']} decided clips are not in the manifest: {summary['unknown_clip_ids']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raymlc", description="Multi-label audio tagging with incomplete labels, on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("make-demo", help="write the built-in demo dataset (audio + manifest.parquet)")
    demo.add_argument("--output", required=True, help="directory to write DIR/manifest.parquet and DIR/audio/")
    demo.add_argument("--config", help="YAML file with DemoConfig fields (sizes, events, removal)")
    demo.add_argument("--seed", type=int, help="random seed (default 0)")
    demo.add_argument("--drop-fraction", type=float, help="fraction of train positives removed (default 0.3)")
    demo.add_argument("--removal", choices=["structured", "random"], help="how positives are removed")
    demo.set_defaults(run=cmd_make_demo)

    mixtures = commands.add_parser(
        "make-mixtures",
        help="write multi-label mixtures of real FSDD spoken-digit recordings (audio + manifest.parquet)",
        description="Mixes 1-3 distinct digits per clip from {digit}_{speaker}_{take}.wav recordings; train, val "
        "and test use disjoint speakers; a fraction of the train positives is moved to removed_labels.",
    )
    mixtures.add_argument("--recordings", required=True, help="directory of FSDD {digit}_{speaker}_{take}.wav files")
    mixtures.add_argument("--output", required=True, help="directory to write DIR/manifest.parquet and DIR/audio/")
    mixtures.add_argument("--config", help="YAML file with MixtureConfig fields (sizes, speakers, levels, removal)")
    mixtures.add_argument("--seed", type=int, help="random seed (default 0)")
    mixtures.add_argument("--drop-fraction", type=float, help="fraction of train positives removed (default 0.3)")
    mixtures.add_argument("--removal", choices=["structured", "random"], help="how positives are removed")
    mixtures.set_defaults(run=cmd_make_mixtures)

    train = commands.add_parser("train", help="train a tagger locally (one process) and write metrics.json")
    train.add_argument("--config", required=True, help="run config YAML (see configs/)")
    train.add_argument("--output", required=True, help="run directory for checkpoint.pt and metrics.json")
    train.add_argument("--manifest", help="override data.manifest from the config")
    train.add_argument(
        "--label-source",
        choices=["observed", "clean"],
        help="train on `labels` as given, or on labels ∪ removed_labels (the clean-label oracle)",
    )
    train.set_defaults(run=cmd_train)

    pipeline = commands.add_parser(
        "pipeline",
        help="teacher -> scores -> flags -> student (+ oracle, perfect mask) on Ray; writes metrics.json, report.md",
        description="Runs every stage of teacher-student loss masking into one run directory. Uses the Ray "
        "cluster at RAY_ADDRESS when set, else starts Ray in this process. Rerunning the same command skips "
        "finished stages and resumes an interrupted training run from its last checkpoint.",
    )
    pipeline.add_argument("--config", required=True, help="pipeline config YAML (e.g. configs/demo.yaml)")
    pipeline.add_argument("--output", default="runs/pipeline", help="run directory (default runs/pipeline)")
    pipeline.add_argument("--manifest", help="override data.manifest from the config")
    pipeline.set_defaults(run=cmd_pipeline)

    sweep = commands.add_parser(
        "sweep",
        help="Ray Tune sweep (Optuna TPE + ASHA) of discard %%, loss, lr and thresholds; teacher scored once",
        description="Trains the teacher and scores the train split once, then runs Ray Tune trials that each "
        "derive flags with their own discard % and train the student (one Ray Train worker per seed). Writes "
        "results.parquet/.csv, best_config.yaml, best_bundle/ and curve.png into OUTPUT. Rerunning the same "
        "command resumes an interrupted sweep (finished trials are kept). Uses the Ray cluster at RAY_ADDRESS "
        "when set, else starts Ray in this process.",
    )
    sweep.add_argument("--config", required=True, help="sweep config YAML (e.g. configs/sweep_demo.yaml)")
    sweep.add_argument("--output", default="runs/sweep", help="sweep directory (default runs/sweep)")
    sweep.add_argument("--num-trials", type=positive_int, help="override num_trials")
    sweep.add_argument("--seeds", type=positive_int, help="override seeds per configuration")
    sweep.add_argument("--epochs", type=positive_int, help="override the student epochs per trial")
    sweep.add_argument("--storage", help="override storage, where Tune keeps its state (path or s3://, gs:// URI)")
    sweep.set_defaults(run=cmd_sweep)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on one split and write metrics.json")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `raymlc train`")
    evaluate.add_argument("--output", required=True, help="directory for metrics.json")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score")
    evaluate.add_argument("--config", help="run config whose data section replaces the checkpoint's")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="tag audio files with a tagger bundle (`raymlc train` writes OUTPUT/bundle)",
        description="Print each file's present tags as `label (score > threshold)`. Scores and thresholds "
        "are on the logit scale (log-odds; probability = sigmoid(score)); a tag is present iff its score "
        "exceeds its per-clip adaptive threshold. A file that cannot be read prints an error line naming "
        "it, the other files are still tagged, and the exit status is 1.",
    )
    predict.add_argument("bundle", help="bundle directory (local path or s3://, gs://, file:// URI)")
    predict.add_argument(
        "files", nargs="+", help="audio files (feature bundles: .npy files holding one feature vector)"
    )
    predict.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line per file: {"file", "labels": [{"name", "score", "threshold", '
        '"present"}, ...]} over all labels, score and threshold as logits; {"file", "error"} when unreadable',
    )
    predict.add_argument("--batch-size", type=positive_int, default=16, help="files tagged per batch (default 16)")
    predict.set_defaults(run=cmd_predict)

    serve = commands.add_parser(
        "serve",
        help="serve a tagger bundle over HTTP with Ray Serve on this machine, until Ctrl-C",
        description="Starts Ray in this process and serves the bundle: POST /v1/tag (an audio file), "
        "POST /v1/tag/embedding (a feature vector), GET /v1/labels, /healthz, /metrics; API docs at /docs. "
        "SIGINT or SIGTERM shuts Serve and Ray down. On a cluster use `serve deploy serve/config.yaml`.",
    )
    serve.add_argument("--bundle", required=True, help="bundle directory (local path or s3://, gs://, file:// URI)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument(
        "--max-replicas", type=positive_int, default=1, help="autoscale from 1 to N replicas, 1 CPU each (default 1)"
    )
    serve.add_argument(
        "--max-batch-size", type=positive_int, default=16, help="clips per model call; 1 disables batching"
    )
    serve.add_argument(
        "--max-duration-s", type=positive_float, default=120.0, help="longest clip accepted, in seconds (default 120)"
    )
    serve.add_argument(
        "--token-file", help="require this file's bearer token on /v1/* (else $RAYMLC_API_TOKEN; neither: open)"
    )
    serve.set_defaults(run=cmd_serve)

    relabel = commands.add_parser(
        "relabel",
        help="propose missing labels for a manifest with a tagger bundle (Ray Data); resumable",
        description="Streams the manifest through Ray Data (decode in tasks, tagging in an autoscaling actor "
        "pool) and writes OUTPUT/manifest/ (the input rows with proposed_labels, scores and margins), "
        "review_queue.parquet/.csv, rejects.parquet, summary.json and, last, _SUCCESS. Rerunning the same "
        "command after a crash keeps the committed parts and finishes the rest. Uses the Ray cluster at "
        "RAY_ADDRESS when set, else starts Ray in this process.",
    )
    add_relabel_arguments(relabel)
    relabel.set_defaults(run=cmd_relabel, prog_name="raymlc relabel")

    review = commands.add_parser(
        "review",
        help="a web page to listen to a run's proposed labels and mark them present / absent / unsure",
        description="Serves the review queue of a relabel run (review_queue.parquet) or a pipeline run "
        "(flag_top.parquet): each item's audio segment, proposed label, score, margin and current labels, with "
        "buttons and keyboard shortcuts. Every decision is appended to DECISIONS/decisions-<reviewer>.jsonl as "
        "it is made; reopening the page resumes. Auth: a bearer token from --token-file or $RAYMLC_API_TOKEN "
        "(open the page as http://HOST:PORT/#token=TOKEN).",
    )
    review.add_argument("--queue", required=True, help="relabel or pipeline run directory holding the queue")
    review.add_argument("--decisions", help="where decisions are stored (default QUEUE/review)")
    review.add_argument("--reviewer", default="reviewer", help="default reviewer name shown on the page")
    review.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    review.add_argument("--port", type=positive_int, default=8765, help="HTTP port (default 8765)")
    review.add_argument("--token-file", help="file holding the bearer token (else $RAYMLC_API_TOKEN; none: open)")
    review.set_defaults(run=cmd_review)

    apply = commands.add_parser(
        "apply-review",
        help="write a new manifest with review decisions applied (present -> labels, absent -> explicit negatives)",
        description="Accepted labels join `labels`, rejected ones join `explicit_negatives` (never flagged); a "
        "`review` column records every reviewed entry. Each reviewer's last decision counts, 'unsure' abstains, "
        "and an entry on which reviewers disagree is a conflict and left unchanged. The input is never modified.",
    )
    apply.add_argument("--input", required=True, help="the manifest the queue was made from")
    apply.add_argument("--decisions", required=True, help="directory of decisions-<reviewer>.jsonl files")
    apply.add_argument("--output", required=True, help="new Parquet manifest to write (must not exist)")
    apply.add_argument("--format", help="input manifest format when the extension does not tell")
    apply.set_defaults(run=cmd_apply_review)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except (ConfigError, ManifestError, FileNotFoundError) as error:
        print(f"raymlc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name not in EXTRAS:
            raise
        print(f"raymlc {args.command}: error: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
