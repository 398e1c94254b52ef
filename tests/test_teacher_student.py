"""The in-memory teacher–student loop: its flag rules against brute force, the order and content of the models it
trains (with a recording trainer), pairing, and one real run on a tiny feature dataset."""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
from flag_reference import brute_force_flags
from sklearn.metrics import average_precision_score

from raymlc.config import PipelineConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import Dataset, SplitData
from raymlc.flagging import crossfit_folds, flag_mask_for, flags_from_pairs
from raymlc.teacher_student import (
    ModelSpec,
    choose_percent,
    flag_report,
    loss_mask,
    perfect_flags,
    probabilities,
    random_control,
    recovered,
    run_teacher_student,
    top_percent_flags,
    train_and_score,
)

N_CLASSES = 4


def split(rng: np.random.Generator, n: int, dim: int = 6) -> SplitData:
    """Random features; positives, removed positives (disjoint from them) and explicit negatives."""
    targets = (rng.random((n, N_CLASSES)) < 0.3).astype(np.float32)
    removed = ((rng.random((n, N_CLASSES)) < 0.15) & (targets == 0)).astype(np.float32)
    explicit = ((rng.random((n, N_CLASSES)) < 0.1) & (targets == 0) & (removed == 0)).astype(np.float32)
    inputs = rng.normal(size=(n, dim)).astype(np.float32) + targets.sum(axis=1, keepdims=True)
    return SplitData([f"c{i}" for i in range(n)], inputs, targets, removed, explicit)


def dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    vocabulary = LabelVocabulary([f"l{c}" for c in range(N_CLASSES)])
    return Dataset(vocabulary, split(rng, 120), split(rng, 40), split(rng, 40))


def config(**flagging: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data": {"manifest": "unused.parquet"},
            "model": {"kind": "mlp", "hidden": [16], "embedding_dim": 8},
            "train": {"epochs": 2, "batch_size": 16, "seed": 3},
        }
        | ({"flagging": flagging} if flagging else {})
    )


def brute_force_top(scores: np.ndarray, train: SplitData, percent: float) -> set[tuple[int, int]]:
    """`flag_reference.brute_force_flags` of a whole split, as (row, class) pairs."""
    rows = np.arange(len(train))
    chosen = brute_force_flags(rows, scores, train.targets > 0, train.explicit_negatives > 0, int(percent))
    return {(int(r), c) for c, flagged in enumerate(chosen) for r in flagged}


def pairs(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(mask), strict=True)}


@pytest.mark.parametrize("percent", [1.0, 5.0, 20.0])
def test_top_percent_flags_match_brute_force_with_ties(percent: float) -> None:
    data = dataset().train
    scores = np.round(np.random.default_rng(1).random((len(data), N_CLASSES)), 1)  # many ties
    flags = top_percent_flags(scores, data, percent)
    mask = flag_mask_for(np.arange(len(data)), flags)
    assert pairs(mask) == brute_force_top(scores, data, percent)
    np.testing.assert_array_equal(loss_mask(flags, len(data)), 1.0 - mask)
    assert loss_mask(None, len(data)) is None


def test_random_control_keeps_counts_on_implicit_negatives_only() -> None:
    data = dataset().train
    like = top_percent_flags(np.random.default_rng(2).random((len(data), N_CLASSES)), data, 20.0)
    control = random_control(data, like, seed=5)
    mask = flag_mask_for(np.arange(len(data)), control)
    np.testing.assert_array_equal(mask.sum(axis=0), like.counts)
    assert not (mask & ((data.targets > 0) | (data.explicit_negatives > 0))).any()
    assert pairs(mask) == pairs(flag_mask_for(np.arange(len(data)), random_control(data, like, seed=5)))
    assert pairs(mask) != pairs(flag_mask_for(np.arange(len(data)), random_control(data, like, seed=6)))


def test_perfect_flags_are_exactly_the_removed_labels_and_report_perfect_quality() -> None:
    data = dataset().train
    flags = perfect_flags(data)
    assert pairs(flag_mask_for(np.arange(len(data)), flags)) == pairs(data.removed)
    report = flag_report(data, flags)
    assert report == {"count": int(data.removed.sum()), "precision": 1.0, "recall": 1.0}


def test_choose_percent_takes_the_best_validation_map() -> None:
    targets = dataset().val.targets
    rng = np.random.default_rng(4)
    val_logits = {p: rng.normal(size=targets.shape) + p * targets for p in (0.5, 1.0, 2.0)}
    reference = {p: average_precision_score(targets, logits, average="macro") for p, logits in val_logits.items()}
    assert choose_percent(targets, val_logits) == max(reference, key=reference.get)


def test_recovered_fractions_follow_their_formulas() -> None:
    got = recovered({"teacher": 0.60, "student": 0.63, "perfect_mask": 0.66, "oracle": 0.70})
    assert got["gain_fraction"] == pytest.approx(0.5) and got["gap_recovered"] == pytest.approx(0.3)
    assert recovered({"teacher": 0.6, "student": 0.7, "perfect_mask": 0.55}) == {
        "gap_recovered": None,
        "gain_fraction": None,
    }


class RecordingTrainer:
    """Returns logits that depend on the spec's name only, and records every batch of specs it was given."""

    def __init__(self, data: Dataset, fold_of: np.ndarray | None = None) -> None:
        self.data, self.fold_of, self.batches = data, fold_of, []

    def __call__(self, specs: list[ModelSpec]) -> list[dict[str, np.ndarray]]:
        self.batches.append(list(specs))
        outputs = []
        for spec in specs:
            rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
            n_train = (
                len(self.data.train) if spec.holdout_fold is None else int(np.sum(self.fold_of == spec.holdout_fold))
            )
            outputs.append(
                {s: rng.normal(size=(n, N_CLASSES)) for s, n in (("train", n_train), ("val", 40), ("test", 40))}
            )
        return outputs


def test_run_trains_independent_models_together_then_students_then_the_control() -> None:
    data, settings = dataset(), config()
    trainer = RecordingTrainer(data)
    run = run_teacher_student(settings, data, [1.0, 10.0], trainer)
    names = [[spec.name for spec in batch] for batch in trainer.batches]
    assert names == [
        ["teacher", "perfect_mask", "oracle"],
        ["student@1", "student@10"],
        [f"random@{run.chosen_percent:g}"],
    ]
    oracle = trainer.batches[0][2]
    assert oracle.label_source == "clean" and oracle.flags is None
    # Students flag the top p % by the teacher's in-sample scores; "student" is the p best on val.
    scores = probabilities(run.outputs["teacher"]["train"])
    np.testing.assert_array_equal(run.teacher_scores, scores)
    for spec in trainer.batches[1]:
        percent = float(spec.name.split("@")[1])
        assert pairs(flag_mask_for(np.arange(len(data.train)), spec.flags)) == brute_force_top(
            scores, data.train, percent
        )
    val = {p: run.outputs[f"student@{p:g}"]["val"] for p in (1.0, 10.0)}
    assert run.chosen_percent == choose_percent(data.val.targets, val)
    assert run.outputs["student"] is run.outputs[f"student@{run.chosen_percent:g}"]
    np.testing.assert_array_equal(run.flags["random"].counts, run.flags["student"].counts)


def test_run_with_crossfitting_flags_with_each_folds_out_of_sample_scores() -> None:
    data, settings = dataset(), config(percent=5.0, crossfit_folds=3)
    trainer = RecordingTrainer(data, crossfit_folds(len(data.train), 3, settings.train.seed))
    run = run_teacher_student(settings, data, [5.0], trainer, references=False)
    assert [spec.name for spec in trainer.batches[0]] == ["teacher", "teacher-fold0", "teacher-fold1", "teacher-fold2"]
    for fold in range(3):
        held_out = np.flatnonzero(trainer.fold_of == fold)
        expected = probabilities(run.outputs[f"teacher-fold{fold}"]["train"])
        np.testing.assert_array_equal(run.teacher_scores[held_out], expected)
    assert "random" not in run.outputs and "oracle" not in run.outputs


def test_train_and_score_is_paired_and_the_oracle_learns_the_removed_labels() -> None:
    data, settings = dataset(), config()
    first = train_and_score(settings, data, ModelSpec("teacher"))
    again = train_and_score(settings, data, ModelSpec("teacher-again"))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first[name], again[name])  # same seed: same weights, batches
        assert first[name].shape == (len(getattr(data, name)), N_CLASSES)
    oracle = train_and_score(settings, data, ModelSpec("oracle", label_source="clean"))
    clean = replace(data, train=replace(data.train, targets=np.maximum(data.train.targets, data.train.removed)))
    reference = train_and_score(settings, clean, ModelSpec("teacher"))
    np.testing.assert_array_equal(oracle["test"], reference["test"])
    fold = train_and_score(config(crossfit_folds=2), data, ModelSpec("teacher-fold1", holdout_fold=1))
    assert len(fold["train"]) == int(np.sum(crossfit_folds(len(data.train), 2, 3) == 1))
    with_embedding = train_and_score(settings, data, ModelSpec("teacher"), embeddings=True)
    assert with_embedding["val_embedding"].shape == (len(data.val), 8)


def test_masked_entries_do_not_count_whatever_their_labels() -> None:
    """A real masked student: with every entry of class 0 flagged, flipping class 0's labels changes nothing."""
    data, settings = dataset(), config()
    rows = np.arange(len(data.train))
    class_0 = flags_from_pairs(rows, np.zeros(len(rows), np.int64), N_CLASSES)
    flipped_train = replace(data.train, targets=data.train.targets.copy())
    flipped_train.targets[:, 0] = 1 - flipped_train.targets[:, 0]
    flipped = replace(data, train=flipped_train)
    masked = train_and_score(settings, data, ModelSpec("masked", flags=class_0))
    masked_flipped = train_and_score(settings, flipped, ModelSpec("masked", flags=class_0))
    np.testing.assert_allclose(masked["test"], masked_flipped["test"], atol=1e-6)
    plain, plain_flipped = (train_and_score(settings, d, ModelSpec("plain")) for d in (data, flipped))
    assert np.abs(plain["test"] - plain_flipped["test"]).max() > 1e-3
