"""`raymlc sweep`: Ray Tune (Optuna TPE, ASHA) over the student of teacher–student loss masking.

Stage 1 trains the teacher and scores the train split once (`teacher_student.teacher_scores`, skipped when the
sweep directory already has them). Stage 2 is a Tuner whose trials each derive flags from those scores
with their own discard %, then run a `TorchTrainer` (the pipeline's training loop, one worker per seed)
that reports the seed-mean validation metric every epoch through `TuneReportCallback`, which ASHA uses to
stop poor trials early; the report of a trial's last epoch holds its objective (for macro-F1, the adaptive
thresholds' score, computed by the workers) and `final: 1`. Rerunning the same command
restores the Tuner (`Tuner.restore`): finished trials are kept, unfinished ones continue.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optuna
import pyarrow as pa
import ray.tune
import torch
import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from raymlc.bundle import export_bundle
from raymlc.checkpoint import CHECKPOINT, load_checkpoint
from raymlc.config import PipelineConfig, SweepConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import REJECTS, load_manifest_table, load_split, write_rejects
from raymlc.data.files import absolute, write_json
from raymlc.distributed.cluster import ensure_ray
from raymlc.distributed.flagging import select_flags_local
from raymlc.distributed.teacher_student import RunDirectory, teacher_scores
from raymlc.distributed.training import build_trainer, readable_splits
from raymlc.flagging import save_flags
from raymlc.scoring import evaluate
from raymlc.sweep import (
    PARAMS,
    UNTRUSTED_VALIDATION_WARNING,
    best_row,
    plot_curve,
    reference_points,
    suggest_params,
    trial_config,
    validation_macro_f1,
    write_results,
)
from raymlc.thresholds import adaptive_f1, fit_tagger_thresholds

TUNE_NAME = "tune"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: the base config (absolute paths), the teacher's scores, where to write."""

    base: PipelineConfig
    sweep: SweepConfig
    epochs: int
    vocabulary: tuple[str, ...]
    scores_dir: str
    scores_version: str
    output: str
    splits: dict[str, pa.Table]  # the readable train/val/test rows (probed once, before the teacher)


class ObjectiveReport(TuneReportCallback):
    """`TuneReportCallback` that also reports the per-epoch objective (`key`, and its spread over seeds)
    as `objective`, `objective_std` (unless the workers computed it: `final_objective`), `final: 1` at the
    last epoch, and the constant fields `extra`."""

    def __init__(self, key: str, epochs: int, extra: dict) -> None:
        super().__init__()
        self._key, self._epochs, self._extra = key, epochs, extra

    def after_report(self, run_context, metrics, checkpoint) -> None:
        record = metrics[0]
        objective = {
            "objective": record.get("objective", record[self._key]),
            "objective_std": record.get("objective_std", record[f"{self._key}_std"]),
        }
        if record["epoch"] == self._epochs:
            objective["final"] = 1
        super().after_report(run_context, [record | objective | self._extra, *metrics[1:]], checkpoint)


class KeepNoMaskASHA(ASHAScheduler):
    """ASHA that never stops the no-mask reference trial (p = 0, with `no_mask: reference`), so the best
    trial is compared with p = 0 at the same, last epoch; the reference's results still count in the rungs."""

    def __init__(self, keep_no_mask: bool, **asha: object) -> None:
        super().__init__(**asha)
        self.keep_no_mask = keep_no_mask

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if self.keep_no_mask and trial.config.get("discard_percent") == 0:
            return self.CONTINUE
        return action


def scores_version(scores_dir: Path) -> str:
    """A short fingerprint of the teacher's scores files (names, sizes, mtimes): equal iff scored once."""
    digest = hashlib.sha1()
    for path in sorted(scores_dir.rglob("*.parquet")):
        stat = path.stat()
        digest.update(f"{path.relative_to(scores_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def run_trial(params: dict, setup: TrialSetup) -> None:
    """One Tune trial: flags for its discard %, the student's seeds on Ray Train, then its objective."""
    torch.set_num_threads(setup.base.ray.torch_threads)
    trial_id = ray.tune.get_context().get_trial_id()
    sweep, vocabulary = setup.sweep, LabelVocabulary(list(setup.vocabulary))
    config = trial_config(setup.base, params, setup.epochs)
    config.ray.storage_path = str(Path(setup.output, "trials"))
    config.ray.cpus_per_worker = sweep.cpus_per_seed
    flags_path, flag_count = None, 0
    if params["discard_percent"] > 0:
        flags_path = Path(setup.output, "trials", f"{trial_id}-flags.parquet")
        flags_path.parent.mkdir(parents=True, exist_ok=True)
        result = select_flags_local(Path(setup.scores_dir), vocabulary, config.flagging)
        save_flags(result, str(flags_path))
        flag_count = int(result.counts.sum())
    seeds = [setup.base.train.seed + i for i in range(sweep.seeds)]
    constants = {"flags": flag_count, "teacher_scores": setup.scores_version}
    build_trainer(
        config,
        trial_id,
        vocabulary,
        setup.splits,
        flags=str(flags_path) if flags_path else None,
        seeds=seeds,
        callbacks=[ObjectiveReport(f"val_{sweep.objective}", setup.epochs, constants)],
        # macro-F1 of the trial's adaptive thresholds, judged on clips they were not fitted on
        final_objective=validation_macro_f1 if sweep.objective == "macro_f1" else None,
    ).fit()


def _tuner_trainable(setup: TrialSetup):
    return ray.tune.with_resources(ray.tune.with_parameters(run_trial, setup=setup), {"cpu": setup.sweep.trial_cpus})


def _new_tuner(setup: TrialSetup, storage: str) -> ray.tune.Tuner:
    sweep = setup.sweep
    searcher = OptunaSearch(
        space=partial(suggest_params, sweep.space),
        metric="objective",
        mode="max",
        points_to_evaluate=reference_points(sweep.space, setup.base) or None,
        sampler=optuna.samplers.TPESampler(seed=sweep.search_seed, n_startup_trials=sweep.startup_trials),
    )
    scheduler = KeepNoMaskASHA(
        keep_no_mask=sweep.space.no_mask == "reference",
        time_attr="epoch",
        metric="objective",
        mode="max",
        # Rungs only below the last epoch, and no stop at max_t: a trial that reaches its last epoch
        # finishes and makes its final report (its objective) instead of being cut off at a last rung.
        max_t=setup.epochs - 1,
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
        stop_last_trials=False,
    )
    return ray.tune.Tuner(
        _tuner_trainable(setup),
        tune_config=ray.tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sweep.num_trials,
            max_concurrent_trials=sweep.max_concurrent_trials,
        ),
        run_config=ray.tune.RunConfig(name=TUNE_NAME, storage_path=storage, verbose=1),
    )


def _trial_rows(grid: ray.tune.ResultGrid, seeds: int) -> list[dict]:
    """One row per trial: parameters, last reported metrics, status and the per-epoch objective."""
    rows = []
    for result in grid:
        config, metrics = result.config or {}, result.metrics or {}
        status = "error" if result.error else "completed" if metrics.get("final") else "stopped early"
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name, "status": status}
        row |= {name: config.get(name, 0.0 if name == "discard_percent" else None) for name in PARAMS}
        row |= {
            "objective": metrics.get("objective"),
            "objective_std": metrics.get("objective_std"),
            "seeds": seeds,
            "epochs_run": metrics.get("epoch"),
            "val_map": metrics.get("val_map"),
            "val_lwlrap": metrics.get("val_lwlrap"),
            "val_macro_f1_at_0.5": metrics.get("val_macro_f1"),
            "flags": metrics.get("flags"),
            "teacher_scores": metrics.get("teacher_scores"),
            "checkpoint_path": metrics.get("checkpoint_path"),
            "error": str(result.error) if result.error else None,
            "objective_by_epoch": _objective_by_epoch(result),
        }
        rows.append(row)
    return rows


def _objective_by_epoch(result: ray.tune.Result) -> list[float]:
    """The trial's objective at each epoch it reported."""
    frame = result.metrics_dataframe
    if frame is None or "objective" not in frame or "epoch" not in frame:
        return []
    return frame.groupby("epoch")["objective"].last().sort_index().tolist()


def compare_at_epoch(best: dict, other: dict) -> dict | None:
    """`best` and `other` at the last epoch both reached (ASHA may have stopped `other` early)."""
    epochs = min(len(best["objective_by_epoch"]), len(other["objective_by_epoch"]))
    if not epochs:
        return None
    return {
        "epoch": epochs,
        "best": best["objective_by_epoch"][epochs - 1],
        other["trial_id"]: other["objective_by_epoch"][epochs - 1],
    }


def _export_best(best: dict, setup: TrialSetup, output: Path, log: Callable[[str], None]) -> dict:
    """The best trial's first-seed model as a tagger bundle, thresholds fitted with its λ, Δ, weight."""
    config = trial_config(setup.base, best, setup.epochs)
    (output / "best_config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    model, _, vocabulary = load_checkpoint(Path(best["checkpoint_path"], CHECKPOINT))
    model.eval()
    splits = {name: load_split(rows, vocabulary, None, config) for name, rows in setup.splits.items()}
    window = config.window_samples
    fitted = fit_tagger_thresholds(model, splits["train"], splits["val"], config)
    metrics = {"test": evaluate(model, splits["test"], config.train.eval_batch_size, window)}
    metrics["test_adaptive"] = adaptive_f1(model, fitted, splits["test"], config.train.eval_batch_size, window)
    bundle = output / "best_bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    export_bundle(str(bundle), model, config, vocabulary, fitted, splits, metrics)
    log(f"best bundle: {bundle} (test mAP {metrics['test']['map']:.3f})")
    return metrics


def run_sweep(sweep: SweepConfig, output: Path, log: Callable[[str], None] = print) -> dict:
    """Teacher and scores once, then the Tuner (restored when `output` holds an unfinished one); writes
    results.parquet/.csv, best_config.yaml, best_bundle/, curve.png and summary.json; returns the summary."""
    started = time.time()
    base = sweep.pipeline()
    base.data.manifest = absolute(base.data.manifest)
    base.data.test_manifest = base.data.test_manifest and absolute(base.data.test_manifest)
    base.ray.storage_path = absolute(base.ray.storage_path)
    epochs = sweep.student_epochs(base)
    ensure_ray()
    output = output.resolve()
    run = RunDirectory(output)
    (output / "sweep.yaml").write_text(yaml.safe_dump(sweep.model_dump(), sort_keys=False))
    if not sweep.trusted_validation:
        log(f"WARNING: {UNTRUSTED_VALIDATION_WARNING}")
    table = load_manifest_table(base)
    vocabulary = LabelVocabulary.from_table(table)
    splits, rejects = readable_splits(table, base)  # an empty or mostly unreadable split stops the sweep here
    write_rejects(output / REJECTS, rejects)
    scores_dir = teacher_scores(base, run, splits, vocabulary, log)
    version = scores_version(scores_dir)
    log(f"teacher: trained and scored once (scores {version} in {scores_dir}); every trial derives its flags there")

    setup = TrialSetup(base, sweep, epochs, vocabulary.names, str(scores_dir), version, str(output), splits)
    storage = sweep.storage or str(output)
    experiment = f"{storage.rstrip('/')}/{TUNE_NAME}"
    if ray.tune.Tuner.can_restore(experiment):
        log(f"tune: resuming {experiment} (finished trials are kept, unfinished ones continue)")
        tuner = ray.tune.Tuner.restore(
            experiment, trainable=_tuner_trainable(setup), resume_unfinished=True, restart_errored=True
        )
    else:
        log(f"tune: {sweep.num_trials} trials x {sweep.seeds} seeds, {epochs} epochs, objective val {sweep.objective}")
        tuner = _new_tuner(setup, storage)
    rows = _trial_rows(tuner.fit(), sweep.seeds)

    write_results(rows, output)
    plot_curve(rows, output / "curve.png", sweep.objective)
    best = best_row(rows)
    no_mask = [row for row in rows if row["discard_percent"] == 0 and row["objective"] is not None]
    best_no_mask = max(no_mask, key=lambda row: (row["epochs_run"], row["objective"])) if no_mask else None
    summary = {
        "objective": sweep.objective,
        "trusted_validation": sweep.trusted_validation,
        "trials": len(rows),
        "status": {status: sum(row["status"] == status for row in rows) for status in {r["status"] for r in rows}},
        "teacher_scores": version,
        "teacher_scores_used_by_trials": sorted({row["teacher_scores"] for row in rows if row["teacher_scores"]}),
        "best": best,
        "best_no_mask": best_no_mask,
        "best_vs_no_mask_same_epoch": compare_at_epoch(best, best_no_mask) if best and best_no_mask else None,
        "best_bundle_metrics": _export_best(best, setup, output, log) if best else None,
        "wall_s": time.time() - started,
    }
    write_json(output / "summary.json", summary)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """Human-readable lines: trial counts, the best trial and the best trial without a mask."""
    lines = [f"trials: {summary['trials']} ({', '.join(f'{n} {s}' for s, n in sorted(summary['status'].items()))})"]
    for label, key in (("best", "best"), ("best with p = 0", "best_no_mask")):
        row = summary.get(key)
        if row:
            lines.append(
                f"{label}: val {summary['objective']} {row['objective']:.4f} ± {row['objective_std'] or 0:.4f}  "
                f"p {row['discard_percent']:.3g} %  loss {row['loss']}  lr {row['lr']:.2e}  λ {row['lam']:.2f}  "
                f"Δ {row['margin']:.2f}  weight {row['margin_weight']:.2f}  ({row['trial_id']})"
            )
    if same_epoch := summary.get("best_vs_no_mask_same_epoch"):
        values = ", ".join(f"{name} {value:.4f}" for name, value in same_epoch.items() if name != "epoch")
        lines.append(f"at epoch {same_epoch['epoch']}: {values}")
    if not summary["trusted_validation"]:
        lines.append(f"WARNING: {UNTRUSTED_VALIDATION_WARNING}")
    return lines
