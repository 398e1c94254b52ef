"""The pure side of `raymlc sweep` (no Ray): the search space, each trial's config, cross-fitted
validation F1, the results table and the curve of the validation metric against discard %."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from torch import nn

from raymlc.config import FloatRange, PipelineConfig, SearchSpaceConfig, SweepConfig, load_with_overrides
from raymlc.data.dataset import SplitData
from raymlc.decision_rules import adaptive
from raymlc.metrics import f1_scores
from raymlc.scoring import predict
from raymlc.thresholds import MemoryBank, adaptive_f1, fit_tagger_thresholds, fit_thresholds, idf, thresholds_for

FLOAT_PARAMS = ("lr", "lam", "margin", "margin_weight")
PARAMS = ("discard_percent", "loss", *FLOAT_PARAMS)
UNTRUSTED_VALIDATION_WARNING = (
    "the validation split is not declared trusted (trusted_validation: false): validation labels may be as "
    "incomplete as the training labels, and a discard % chosen on them often hurts (missing positives in "
    "validation reward a model for missing them too). Declare a completely labelled split trusted to rely on it."
)


def load_sweep_config(path: str | Path, **overrides: object) -> SweepConfig:
    """A sweep YAML with command-line overrides (a None value keeps the file's), its base config read and
    validated too; errors name the file and the field."""
    sweep = load_with_overrides(path, SweepConfig, **overrides)
    sweep.student_epochs(sweep.pipeline())
    return sweep


def suggest_params(space: SearchSpaceConfig, trial: Any) -> dict:
    """Optuna define-by-run space: suggests each ranged dimension on `trial`; returns the fixed ones.

    Discard % is sampled from its range, except p = 0 (no mask) in the study's first trial with
    `no_mask: reference` (`reference_points` enqueues the no-mask reference first), and in the trials whose
    categorical `mask` is False with `no_mask: searched`. p = 0 is never put into a log range.
    """
    fixed: dict = {}
    percent = space.discard_percent
    if not isinstance(percent, FloatRange):
        fixed["discard_percent"] = float(percent)
    elif (space.no_mask == "reference" and trial.number == 0) or (
        space.no_mask == "searched" and not trial.suggest_categorical("mask", [True, False])
    ):
        fixed["discard_percent"] = 0.0
    else:
        trial.suggest_float("discard_percent", percent.low, percent.high, log=percent.log)
    for name in FLOAT_PARAMS:
        value = getattr(space, name)
        if isinstance(value, FloatRange):
            trial.suggest_float(name, value.low, value.high, log=value.log)
        else:
            fixed[name] = float(value)
    if len(space.loss) > 1:
        trial.suggest_categorical("loss", list(space.loss))
    else:
        fixed["loss"] = space.loss[0]
    return fixed


def _base_values(base: PipelineConfig) -> dict:
    thresholds = base.thresholds
    return {
        "lr": base.train.lr,
        "lam": thresholds.lam,
        "margin": thresholds.margin,
        "margin_weight": thresholds.margin_weight,
        "loss": base.student_loss,
    }


def reference_points(space: SearchSpaceConfig, base: PipelineConfig) -> list[dict]:
    """The trials run first: the base config without a mask (p = 0, unless `no_mask: never`) and with its
    own `flagging.percent`.

    Ranged values take the base config's value, clipped into the range; both points differ only in p,
    so "best vs discard 0" can be read from the results.
    """
    percent = space.discard_percent
    if not isinstance(percent, FloatRange):
        return []
    point: dict = {}
    for name, value in _base_values(base).items():
        dimension = getattr(space, name)
        if isinstance(dimension, FloatRange):
            point[name] = float(np.clip(value, dimension.low, dimension.high))
        elif name == "loss" and len(dimension) > 1:
            point[name] = value if value in dimension else dimension[0]
    searched = space.no_mask == "searched"
    points = {"reference": [point], "searched": [point | {"mask": False}], "never": []}[space.no_mask]
    if base.flagging.percent and percent.low <= base.flagging.percent <= percent.high:
        points.append(point | ({"mask": True} if searched else {}) | {"discard_percent": base.flagging.percent})
    return points


def trial_config(base: PipelineConfig, params: dict, epochs: int) -> PipelineConfig:
    """The student's pipeline config of one trial: the base with the trial's parameters."""
    config = base.model_dump()
    config["train"] |= {"lr": params["lr"], "loss": params["loss"], "epochs": epochs}
    config["thresholds"] |= {name: params[name] for name in ("lam", "margin", "margin_weight")}
    config["flagging"] |= {"percent": params["discard_percent"], "top_k": None}
    config["student_loss"] = params["loss"]
    return PipelineConfig.model_validate(config)


def validation_macro_f1(
    model: nn.Module,
    train: SplitData,
    val: SplitData,
    config: PipelineConfig,
    mask: np.ndarray | None = None,
) -> float:
    """Macro-F1 on val of the adaptive thresholds (the config's λ, Δ, weight), never judged on clips it
    was fitted on: fitted on train (`fit_split: train`, with `mask`) or, for `fit_split: val`, 2-fold
    cross-fitted on val (each half judged by thresholds fitted on the other half)."""
    settings, batch, window_samples = config.thresholds, config.train.eval_batch_size, config.window_samples
    if settings.fit_split == "train":
        fitted = fit_tagger_thresholds(model, train, val, config, mask)
        return adaptive_f1(model, fitted, val, batch, window_samples)["macro_f1"]
    if len(val) < 2:
        raise ValueError(f"cross-fitting thresholds on val needs at least 2 val clips, got {len(val)}")
    _, train_embeddings = predict(model, train, batch, window_samples)
    bank = MemoryBank.build(train_embeddings, train.targets, settings.bank_size, settings.bank_seed)
    train_idf = idf(train.targets)
    logits, embeddings = predict(model, val, batch, window_samples)
    half = np.random.default_rng(settings.bank_seed).permutation(len(val)) % 2
    scores = []
    for held_out in (0, 1):
        fit, judge = half != held_out, half == held_out
        module = fit_thresholds(logits[fit], embeddings[fit], val.targets[fit], bank, train_idf, settings)
        theta = thresholds_for(module, bank, embeddings[judge])
        scores.append(f1_scores(val.targets[judge], adaptive(logits[judge], theta))[1])
    return float(np.mean(scores))


def results_table(rows: list[dict]) -> pa.Table:
    """One row per trial, sorted by objective (best first; trials without one last)."""
    ordered = sorted(rows, key=lambda row: np.inf if row.get("objective") is None else -row["objective"])
    return pa.Table.from_pylist(ordered)


def write_results(rows: list[dict], output: Path) -> pa.Table:
    """`results.parquet` and `results.csv` in `output`."""
    table = results_table(rows)
    pq.write_table(table, output / "results.parquet")
    lists = [i for i, field in enumerate(table.schema) if pa.types.is_list(field.type)]
    flat = table
    for i in lists:  # CSV has no lists: `;`-separated, as the manifest CSV reader expects
        text = [";".join(f"{v:.6g}" for v in values or []) for values in table.column(i).to_pylist()]
        flat = flat.set_column(i, table.schema.field(i).name, pa.array(text, pa.string()))
    pa_csv.write_csv(flat, output / "results.csv")
    return table


def best_row(rows: list[dict]) -> dict | None:
    """The completed trial with the highest objective."""
    done = [row for row in rows if row["status"] == "completed" and row.get("objective") is not None]
    return max(done, key=lambda row: row["objective"]) if done else None


def plot_curve(rows: list[dict], path: Path, objective: str) -> None:
    """Validation objective against discard % (log axis), p = 0 in its own panel on the left; trials
    stopped early by ASHA are hollow and labelled with their last epoch, error bars are the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (zero_ax, ax) = plt.subplots(
        1, 2, sharey=True, figsize=(8, 4), gridspec_kw={"width_ratios": [1, 6], "wspace": 0.05}
    )
    best = best_row(rows)
    for row in rows:
        if row.get("objective") is None:
            continue
        target = zero_ax if row["discard_percent"] == 0 else ax
        x = 0.0 if row["discard_percent"] == 0 else row["discard_percent"]
        face = "C0" if row["status"] == "completed" else "none"
        target.errorbar(
            x, row["objective"], yerr=row.get("objective_std") or 0.0, fmt="o", color="C0", mfc=face, capsize=3
        )
        if row["status"] != "completed" and row.get("epochs_run"):  # fewer epochs: not comparable as is
            target.annotate(
                f"ep {row['epochs_run']}", (x, row["objective"]), xytext=(5, -3), fontsize=8, textcoords="offset points"
            )
    if best is not None:
        target = zero_ax if best["discard_percent"] == 0 else ax
        target.plot(best["discard_percent"], best["objective"], "*", color="C3", markersize=16, label="best")
        target.legend(loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("discard % (top p % of each class's implicit negatives masked)")
    zero_ax.set_xticks([0.0], ["0"])
    zero_ax.set_xlim(-1, 1)
    zero_ax.set_ylabel(f"validation {objective}")
    ax.tick_params(left=False)
    for axis in (zero_ax, ax):
        axis.grid(alpha=0.3)
    fig.suptitle(f"Sweep: validation {objective} vs discard % (hollow: stopped by ASHA after 'ep' epochs)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
