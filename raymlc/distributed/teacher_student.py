"""`raymlc pipeline`: teacher (Ray Train) -> scores (Ray Data) -> flags -> student, with references: the Ray
stages of `raymlc.teacher_student`, whose models, flag rules and summary numbers it shares.

Scores are the teacher's in-sample scores, or with `flagging.crossfit_folds = k` out-of-sample scores: k
extra teachers, each trained without one fold of the train split and scoring only that fold. After the
student, its adaptive thresholds are fitted and its tagger bundle is written to `DIR/bundle/`.

Every stage reads the previous stage's outputs from the run directory and marks itself done there, so
a rerun of the same command skips finished stages (and Ray Train resumes an unfinished one by name).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from scipy.special import expit

from raymlc.bundle import export_bundle
from raymlc.checkpoint import CHECKPOINT, load_checkpoint
from raymlc.config import PipelineConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import REJECTS, load_manifest_table, load_split, write_rejects
from raymlc.data.files import write_json
from raymlc.distributed.cluster import ensure_ray
from raymlc.distributed.flagging import flag_counts_local, select_flags, write_enhanced_labels
from raymlc.distributed.scoring import read_rejects, score_manifest
from raymlc.distributed.training import readable_splits, train_distributed
from raymlc.flagging import FlagResult, crossfit_folds, flags_from_pairs, load_flags, save_flags
from raymlc.metrics import SUMMARY_KEYS, SUMMARY_NAMES, average_precision_per_class, flag_quality, summarize
from raymlc.report import write_report
from raymlc.reviewing import queue_from_flags
from raymlc.scoring import predict
from raymlc.teacher_student import MODELS, recovered
from raymlc.thresholds import fit_tagger_thresholds
from raymlc.training import BUNDLE

FLAGS = "flags.parquet"


class RunDirectory:
    """Paths of one pipeline run and its per-stage done markers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def model(self, name: str) -> Path:
        return self.root / name / CHECKPOINT

    def done(self, stage: str) -> bool:
        return (self.root / f".done-{stage}").exists()

    def mark_done(self, stage: str) -> None:
        (self.root / f".done-{stage}").touch()


def _train_model(
    config: PipelineConfig,
    run: RunDirectory,
    name: str,
    vocabulary: LabelVocabulary,
    log: Callable[[str], None],
    splits: dict[str, pa.Table],
    label_source: str = "observed",
    flags: Path | None = None,
    holdout_fold: int | None = None,
) -> None:
    """Train one model on `splits` with Ray Train unless the run directory already holds it."""
    if run.done(name):
        log(f"{name}: already trained, skipping")
        return
    log(f"{name}: training on Ray Train ({config.ray.num_workers} workers)")
    result = train_distributed(
        config,
        f"{run.root.resolve().name}-{name}",
        vocabulary,
        splits,
        label_source,
        str(flags) if flags else None,
        holdout_fold,
    )
    log(f"{name}: done, val mAP {result.history[-1]['val_map']:.3f} after {len(result.history)} epochs")
    with result.checkpoint.as_directory() as directory:
        run.model(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(directory, CHECKPOINT), run.model(name))
    write_json(run.root / name / "history.json", {"history": result.history})
    run.mark_done(name)


def _perfect_flags(train_rows: pa.Table, vocabulary: LabelVocabulary, path: Path) -> Path:
    """Flags that mask exactly the removed labels (the perfect-mask reference), saved like the teacher's."""
    rows, classes = vocabulary.encode_pairs(train_rows["removed_labels"])
    save_flags(flags_from_pairs(rows, classes, len(vocabulary)), str(path))
    return path


def run_pipeline(config: PipelineConfig, output: Path, log: Callable[[str], None] = print) -> dict:
    """Run every stage into `output`; returns (and writes) `metrics.json`."""
    ensure_ray()
    run = RunDirectory(output)
    (output / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    table = load_manifest_table(config)
    vocabulary = LabelVocabulary.from_table(table)
    splits, rejects = readable_splits(table, config)  # every clip probed before any training
    write_rejects(output / REJECTS, rejects)
    table, train_rows = pa.concat_tables(splits.values()), splits["train"]
    has_removed = bool(pc.sum(pc.list_value_length(train_rows["removed_labels"])).as_py() or 0)
    log(
        f"data: {len(train_rows)} train clips, {len(vocabulary)} labels, removed labels recorded: {has_removed}, "
        f"{len(rejects)} clips rejected ({output / REJECTS})"
    )
    for reject in rejects:
        log(f"  rejected {reject['clip_id']} ({reject['split']}): {reject['reason']}")

    scores_dir = teacher_scores(config, run, splits, vocabulary, log)

    flags = output / FLAGS
    if not run.done("flags"):
        log("flags: per-class top implicit negatives by teacher score")
        result = select_flags(scores_dir, vocabulary, config.flagging)
        save_flags(result, str(flags))
        write_enhanced_labels(scores_dir, vocabulary, result, output / "flags")
        counts = pa.table({"label": list(vocabulary.names), "budget": result.budget, "flagged": result.counts})
        pq.write_table(counts, output / "flag_counts.parquet")
        pq.write_table(
            queue_from_flags(result, train_rows, vocabulary, config.flagging.report_top),
            output / "flag_top.parquet",
        )
        run.mark_done("flags")

    student_config = config.model_copy(deep=True)
    student_config.train.loss = config.student_loss
    _train_model(student_config, run, "student", vocabulary, log, splits=splits, flags=flags)
    if has_removed and config.references:
        perfect = _perfect_flags(train_rows, vocabulary, output / "perfect_flags.parquet")
        _train_model(student_config, run, "perfect_mask", vocabulary, log, splits=splits, flags=perfect)
        _train_model(config, run, "oracle", vocabulary, log, label_source="clean", splits=splits)

    metrics = _evaluate_models(config, run, table, vocabulary, has_removed, scores_dir, load_flags(str(flags)))
    write_json(output / "metrics.json", metrics)
    if not run.done(BUNDLE):
        log(f"{BUNDLE}: fitting the student's adaptive thresholds, writing {output / BUNDLE}")
        _export_student_bundle(config, run, table, vocabulary, metrics["student"])
        run.mark_done(BUNDLE)
    write_report(output, metrics, vocabulary, config.flagging.report_top)
    return metrics


def teacher_scores(
    config: PipelineConfig,
    run: RunDirectory,
    splits: dict[str, pa.Table],
    vocabulary: LabelVocabulary,
    log: Callable[[str], None],
) -> Path:
    """Stages 1-2, each skipped when done: the teacher (Ray Train), then its scores of the train split
    (Ray Data) in `run.root/scores`; a clip that opened for the probe but could not be scored is logged."""
    _train_model(config, run, "teacher", vocabulary, log, splits=splits)
    scores_dir = run.root / "scores"
    if not run.done("scores"):
        _score_train_split(config, run, splits, vocabulary, scores_dir, log)
        for reject in read_rejects(scores_dir).to_pylist():
            log(f"  not scored {reject['clip_id']}: {reject['reason']}")
        run.mark_done("scores")
    return scores_dir


def _score_train_split(
    config: PipelineConfig,
    run: RunDirectory,
    splits: dict[str, pa.Table],
    vocabulary: LabelVocabulary,
    scores_dir: Path,
    log: Callable[[str], None],
) -> None:
    """Teacher scores of the train split: in-sample, or each fold by the teacher trained without it."""
    folds, train_rows = config.flagging.crossfit_folds, splits["train"]
    if not folds:
        log("scores: teacher scoring the train split on Ray Data")
        score_manifest(train_rows, str(run.model("teacher")), scores_dir, config.scoring)
        return
    log(f"scores: cross-fitting, {folds} teachers each scoring the fold it did not see")
    fold_of_row = crossfit_folds(len(train_rows), folds, config.train.seed)
    rows = train_rows.append_column("row_index", pa.array(np.arange(len(train_rows), dtype=np.int64)))
    for fold in range(folds):
        _train_model(config, run, f"teacher-fold{fold}", vocabulary, log, splits=splits, holdout_fold=fold)
        held_out = rows.filter(pa.array(fold_of_row == fold))
        score_manifest(held_out, str(run.model(f"teacher-fold{fold}")), scores_dir / f"fold{fold}", config.scoring)


def _export_student_bundle(
    config: PipelineConfig, run: RunDirectory, table: pa.Table, vocabulary: LabelVocabulary, test_metrics: dict
) -> None:
    """The student's tagger bundle (`DIR/bundle/`): adaptive thresholds fitted on the frozen student."""
    model, _, _ = load_checkpoint(run.model("student"))
    splits = {name: load_split(table, vocabulary, name, config) for name in ("train", "val")}
    fitted = fit_tagger_thresholds(model.eval(), splits["train"], splits["val"], config)
    export_bundle(str(run.root / BUNDLE), model, config, vocabulary, fitted, splits, {"test": test_metrics})


def _evaluate_models(
    config: PipelineConfig,
    run: RunDirectory,
    table: pa.Table,
    vocabulary: LabelVocabulary,
    has_removed: bool,
    scores_dir: Path,
    flags: FlagResult,
) -> dict:
    """Test metrics of every trained model on the clean test split, flag quality and gain fractions."""
    test = load_split(table, vocabulary, "test", config, label_source="clean")
    window = config.window_samples
    metrics: dict = {"per_class_ap": {}}
    for name in MODELS:
        if not run.model(name).exists():
            metrics[name] = None
            continue
        model, _, _ = load_checkpoint(run.model(name))
        logits, _ = predict(model, test, config.train.eval_batch_size, window)
        metrics[name] = summarize(test.targets, expit(logits))  # what scoring.evaluate computes
        metrics["per_class_ap"][name] = average_precision_per_class(test.targets, logits).tolist()
    quality, per_class_precision = flag_quality(flag_counts_local(scores_dir, vocabulary, flags))
    metrics["flags"] = quality if has_removed else {"count": quality["count"], "precision": None, "recall": None}
    metrics["flag_precision_per_class"] = per_class_precision.tolist() if has_removed else None
    metrics |= recovered({name: metrics[name]["map"] for name in MODELS if metrics[name]})
    metrics["rejects"] = pq.read_metadata(run.root / REJECTS).num_rows
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """Human-readable lines: one per model, then flags and the recovered fractions."""
    lines = []
    for name in MODELS:
        if metrics.get(name):
            values = "  ".join(f"{SUMMARY_NAMES[key]} {metrics[name][key]:.3f}" for key in SUMMARY_KEYS)
            lines.append(f"{name:>12}: {values}")
    flags = metrics["flags"]
    precision = "n/a" if flags["precision"] is None else f"{flags['precision']:.3f}"
    recall = "n/a" if flags["recall"] is None else f"{flags['recall']:.3f}"
    lines.append(f"flags: {flags['count']} flagged, precision {precision}, recall {recall}")
    for key in ("gap_recovered", "gain_fraction"):
        if metrics.get(key) is not None:
            lines.append(f"{key}: {metrics[key]:.3f}")
    return lines
