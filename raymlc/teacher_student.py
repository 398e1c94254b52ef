"""Teacher–student loss masking in one process, in memory: teacher → scores → flags → students → references.

`run_teacher_student` trains, on one `Dataset`:

* **teacher** — on the labels as given; its train-split scores are in-sample, or with
  `flagging.crossfit_folds = k` out-of-sample (k teachers, each trained without one fold of
  `raymlc.flagging.crossfit_folds` and scoring only that fold);
* **student@p** — the loss ignores the top p % of each class's implicit negatives by teacher score, for each
  candidate p; **student** is the one whose p has the best validation mAP;
* the references: **random** (the student's per-class flag counts drawn at random among the implicit
  negatives), **perfect_mask** (exactly the removed labels ignored) and **oracle** (the complete labels).

Every model of a run is paired: the same seed, so the same initial weights, batch order and crops; only the
labels or the loss mask differ. Models are trained by a `Trainer`, which takes a list of `ModelSpec`s that do
not depend on each other (so a caller may train them in parallel, or cache them) and returns their logits;
the default trains them one after the other with `train_and_score`. `model_metrics`, `flag_report` and
`recovered` give the summary numbers; the Ray pipeline (`raymlc.distributed.teacher_student`) reports with
the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from raymlc.config import PipelineConfig
from raymlc.data.dataset import Dataset, SplitData
from raymlc.data.stream import EpochPlan, MemoryClips, class_balanced
from raymlc.decision_rules import fit_per_class, per_class
from raymlc.flagging import (
    FlagResult,
    crossfit_folds,
    flag_budget,
    flag_mask_for,
    flags_from_pairs,
    implicit_negative_counts,
    random_flags,
    select_top,
)
from raymlc.metrics import f1_scores, flag_counts, flag_quality, recovered_fraction, summarize
from raymlc.scoring import predict
from raymlc.training import fit, new_model

MODELS = ("teacher", "student", "perfect_mask", "oracle")
"""The models a pipeline run reports (the random control is the benchmark's)."""
Outputs = dict[str, np.ndarray]
"""Clip-level logits of one model by split: "train" (the rows it scored), "val", "test"; with embeddings also
"train_embedding", "val_embedding", "test_embedding"."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a teacher–student run: the labels it learns and the flags its loss ignores."""

    name: str
    label_source: str = "observed"  # "clean": labels ∪ removed_labels (the oracle)
    flags: FlagResult | None = field(default=None, compare=False)  # rows are train-split positions
    holdout_fold: int | None = None  # a cross-fitting teacher: trained without this fold, scoring only it


Trainer = Callable[[Sequence[ModelSpec]], list[Outputs]]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Teacher scores: the sigmoid of the logits, in their dtype."""
    return 1 / (1 + np.exp(-logits))


def loss_mask(flags: FlagResult | None, n_rows: int) -> np.ndarray | None:
    """The student's loss mask [N, C] (float32): 0 at flagged entries, 1 elsewhere; None without flags."""
    return None if flags is None else (~flag_mask_for(np.arange(n_rows), flags)).astype(np.float32)


def fold_rows(config: PipelineConfig, n_rows: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of cross-fitting fold `fold` of the train split."""
    folds = crossfit_folds(n_rows, config.flagging.crossfit_folds, config.train.seed)
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def train_and_score(config: PipelineConfig, dataset: Dataset, spec: ModelSpec, embeddings: bool = False) -> Outputs:
    """Train `spec`'s model in this process (seeded with `config.train.seed`: paired with every other model of
    the run) and return its logits (and `embeddings`) on the train rows it scores, val and test."""
    train = scored = dataset.train
    if spec.label_source == "clean":
        train = replace(train, targets=np.maximum(train.targets, train.removed))
    if spec.holdout_fold is not None:
        fit_rows, held_out = fold_rows(config, len(train), spec.holdout_fold)
        train, scored = train.take(fit_rows), train.take(held_out)
    torch.manual_seed(config.train.seed)
    model = new_model(config, len(dataset.vocabulary), None if train.is_audio else train.inputs)
    source = MemoryClips(train, config.window_samples, loss_mask(spec.flags, len(train)))
    weights = class_balanced(*np.nonzero(train.targets), len(train)) if config.train.sampler == "balanced" else None
    fit(model, source, EpochPlan.of(config.train, len(train), weights), None, config.train, config.window_samples)
    batch, window = config.train.eval_batch_size, config.window_samples
    outputs = {}
    for name, data in (("train", scored), ("val", dataset.val), ("test", dataset.test)):
        outputs[name], embedding = predict(model, data, batch, window)
        outputs |= {f"{name}_embedding": embedding} if embeddings else {}
    return outputs


def top_percent_flags(scores: np.ndarray, train: SplitData, percent: float) -> FlagResult:
    """Per class the top `percent` % of the split's implicit negatives by `scores` (rows 0..N-1)."""
    positives, explicit = train.targets.astype(bool), train.explicit_negatives.astype(bool)
    return select_top(scores, positives, explicit, flag_budget(implicit_negative_counts(positives, explicit), percent))


def random_control(train: SplitData, like: FlagResult, seed: int) -> FlagResult:
    """`like`'s per-class flag counts, drawn uniformly at random among the split's implicit negatives."""
    return random_flags(train.targets.astype(bool), train.explicit_negatives.astype(bool), like.counts, seed)


def perfect_flags(train: SplitData) -> FlagResult:
    """Flags at exactly the removed labels (the perfect-mask reference)."""
    rows, classes = np.nonzero(train.removed)
    return flags_from_pairs(rows, classes, train.removed.shape[1])


def choose_percent(val_targets: np.ndarray, val_logits: dict[float, np.ndarray]) -> float:
    """The discard % whose student has the best validation mAP (the first of equals)."""
    percents = list(val_logits)
    return percents[int(np.argmax([summarize(val_targets, val_logits[p])["map"] for p in percents]))]


@dataclass
class TeacherStudentRun:
    """Every model's logits and flags by name, the train scores the flags came from, and the chosen p."""

    outputs: dict[str, Outputs]
    flags: dict[str, FlagResult]
    teacher_scores: np.ndarray  # [N_train, C] probabilities: in-sample, or cross-fitted
    chosen_percent: float


def sequential_trainer(config: PipelineConfig, dataset: Dataset) -> Trainer:
    """A `Trainer` that trains the specs one after the other in this process."""
    return lambda specs: [train_and_score(config, dataset, spec) for spec in specs]


def run_teacher_student(
    config: PipelineConfig,
    dataset: Dataset,
    percents: Sequence[float],
    trainer: Trainer | None = None,
    references: bool = True,
) -> TeacherStudentRun:
    """Teacher, students for every candidate p (the one best on val is "student"), and the references."""
    trainer = trainer or sequential_trainer(config, dataset)
    train, folds = dataset.train, config.flagging.crossfit_folds
    independent = [ModelSpec("teacher")]
    independent += [ModelSpec(f"teacher-fold{j}", holdout_fold=j) for j in range(folds)]
    if references:
        independent += [ModelSpec("perfect_mask", flags=perfect_flags(train)), ModelSpec("oracle", "clean")]
    outputs = dict(zip([s.name for s in independent], trainer(independent), strict=True))
    flags = {s.name: s.flags for s in independent if s.flags is not None}
    scores = probabilities(outputs["teacher"]["train"])
    if folds:
        scores = np.zeros_like(scores)
        for j in range(folds):
            scores[fold_rows(config, len(train), j)[1]] = probabilities(outputs[f"teacher-fold{j}"]["train"])

    students = [ModelSpec(f"student@{p:g}", flags=top_percent_flags(scores, train, p)) for p in percents]
    outputs |= dict(zip([s.name for s in students], trainer(students), strict=True))
    flags |= {s.name: s.flags for s in students}
    best = choose_percent(dataset.val.targets, {p: outputs[f"student@{p:g}"]["val"] for p in percents})
    outputs["student"], flags["student"] = outputs[f"student@{best:g}"], flags[f"student@{best:g}"]
    if references:
        control = ModelSpec(f"random@{best:g}", flags=random_control(train, flags["student"], config.train.seed))
        (outputs["random"],) = trainer([control])
        flags["random"] = control.flags
    return TeacherStudentRun(outputs, flags, scores, best)


def model_metrics(dataset: Dataset, outputs: Outputs) -> dict[str, float]:
    """Test metrics at 0.5, macro-F1 with per-class thresholds tuned on val, and the validation mAP."""
    metrics = summarize(dataset.test.targets, probabilities(outputs["test"]))
    thresholds = fit_per_class(outputs["val"], dataset.val.targets)
    metrics["macro_f1_tuned"] = f1_scores(dataset.test.targets, per_class(outputs["test"], thresholds))[1]
    metrics["val_map"] = summarize(dataset.val.targets, outputs["val"])["map"]
    return metrics


def flag_report(train: SplitData, flags: FlagResult) -> dict:
    """Count, precision and recall of `flags` against the split's removed labels."""
    return flag_quality(flag_counts(flag_mask_for(np.arange(len(train)), flags), train.removed))[0]


def recovered(test_map: dict[str, float]) -> dict[str, float | None]:
    """Gap recovered (student − teacher)/(oracle − teacher) and gain fraction (student − teacher)/(perfect
    mask − teacher) of test mAPs by model name; None without the reference or a gain to recover."""
    teacher, student = test_map["teacher"], test_map["student"]
    oracle, perfect = test_map.get("oracle"), test_map.get("perfect_mask")
    return {
        "gap_recovered": None if oracle is None else recovered_fraction(student, oracle, teacher),
        "gain_fraction": None if perfect is None else recovered_fraction(student, perfect, teacher),
    }
