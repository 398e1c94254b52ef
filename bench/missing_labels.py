"""Missing-label benchmark: does teacher–student loss masking recover what incomplete labels cost?

For every condition (dataset, removal kind, drop fraction r) and seed, with paired runs (every model of a
seed shares its initialization, batch order and crops; only the labels or the loss mask differ):

* teacher — trained on the labels as given (a fraction r of the train positives removed);
* student@p — BCE with the top p % of each class's implicit negatives (by the teacher's in-sample score)
  masked out, for each p in `--percents`; **student** is the one whose p is best on the validation split,
  which is complete (trusted, like AudioSet's eval set), never the test split;
* random — the random-mask control: the student's per-class flag counts, drawn at random among the
  implicit negatives;
* cleanlab — cleanlab 2.9's `find_multilabel_issues_per_class` on the same teacher scores (it chooses its
  own flag count); its flags on implicit negatives are masked;
* perfect — the perfect mask: exactly the removed labels masked;
* oracle — trained on the complete labels.

Reported on the complete test split: mAP, lwlrap, d′, macro-F1 at 0.5 and with per-class thresholds tuned on
val; gain fraction (student − teacher)/(perfect − teacher); gap recovered (student − teacher)/(oracle −
teacher); flag precision/recall against the removed labels; the teacher's AUC at separating removed
positives from true negatives among the implicit negatives. With `--crossfit K`, K-fold teachers (each
scoring only its held-out fold) give out-of-sample scores, and the flag precision of both is compared.

Datasets: `demo` (the built-in demo, `configs/demo.yaml`'s model; removal as the demo generator does it),
`emotions` and `birds` (MULAN, `configs/mulan_*.yaml`; the given labels are taken as complete and r of the
train positives are removed here: `random` uniformly, `structured` more often in clips with more labels),
`fsdd` (`raymlc.data.mixtures` digit mixtures, speakers split; `structured` = the quieter digit goes
unlabelled more often). MULAN and FSDD need ../shared/data.

    .venv/bin/python bench/missing_labels.py --dataset demo --removal structured --drop 0.3 --seeds 0 1 2 3 4
    .venv/bin/python bench/missing_labels.py --dataset emotions --removal random --drop 0.2 --seeds 0 1 2 3 4

Each trained model's logits are cached under `bench/results/missing_labels/` (keyed by condition, seed, model
and the training code; the oracle by its clips and complete labels, so the conditions of a dataset share it),
so a rerun only trains what is missing; results go to `bench/results/missing_labels/<condition>.json`
(`--report-only` rewrites it from the cache). Trainings run in `--jobs` processes of one torch thread each.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from raymlc import engine, features, inference, losses, models
from raymlc.config import DemoConfig, RunConfig, load_config
from raymlc.data import LabelVocabulary
from raymlc.data.demo import make_demo
from raymlc.decision_rules import fit_per_class, per_class
from raymlc.engine import SplitData, fit, predict
from raymlc.flagging import flag_budget, flag_matrix, implicit_negative_counts, random_flags
from raymlc.local import Dataset, load_dataset, load_manifest_table, new_model, window_samples
from raymlc.metrics import f1_scores, flag_precision_recall, recovered_fraction, summarize

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "missing_labels"
TRAINING_CODE = (engine, features, inference, losses, models)
MANIFEST = "manifest.parquet"
LABEL_COLUMNS = ("labels", "removed_labels", "explicit_negatives")
MODEL_COLUMNS = ("teacher", "student", "random", "cleanlab", "perfect", "oracle")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Condition:
    dataset: str
    removal: str
    drop: float
    epochs: int | None = None  # None: the dataset config's epochs
    channels: tuple[int, ...] | None = None  # None: the dataset config's CNN channels

    @property
    def name(self) -> str:
        epochs = f"-e{self.epochs}" if self.epochs else ""
        channels = "-c" + "-".join(map(str, self.channels)) if self.channels else ""
        return f"{self.dataset}-{self.removal}-r{self.drop:g}{epochs}{channels}"

    @property
    def oracle_name(self) -> str:
        """The name without removal and drop: the oracle (complete labels) is the same for all of them."""
        return self.name.replace(f"-{self.removal}-r{self.drop:g}", "-complete", 1)


# ---------------------------------------------------------------- data


def _calibrated_removal(weights: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask over positives, P(i) ∝ weights[i] scaled so the expected share is `fraction` (capped at 1)."""
    probabilities = weights / weights.mean() * fraction
    for _ in range(50):  # rescale after capping so the mean stays at `fraction`
        capped = np.minimum(probabilities, 1.0)
        if abs(capped.mean() - fraction) < 1e-6:
            break
        probabilities = probabilities * fraction / capped.mean()
    return rng.random(len(weights)) < np.minimum(probabilities, 1.0)


def remove_positives(train: SplitData, removal: str, fraction: float, seed: int) -> SplitData:
    """Move a fraction of the train positives to `removed`: uniformly, or more often in busier clips."""
    rng = np.random.default_rng([seed, 7])
    rows, cols = np.nonzero(train.targets)
    weights = np.ones(len(rows)) if removal == "random" else train.targets.sum(axis=1)[rows] ** 2
    dropped = _calibrated_removal(weights.astype(float), fraction, rng)
    targets, removed = train.targets.copy(), np.zeros_like(train.targets)
    targets[rows[dropped], cols[dropped]] = 0
    removed[rows[dropped], cols[dropped]] = 1
    return replace(train, targets=targets, removed=removed)


def _data_dir(condition: Condition, seed: int) -> Path:
    return RESULTS / "data" / f"{condition.dataset}-{condition.removal}-r{condition.drop:g}-s{seed}"


def _config(condition: Condition, seed: int) -> RunConfig:
    if condition.dataset == "demo":
        config = load_config(REPO / "configs" / "demo.yaml")
        config.data.manifest = str(
            RESULTS / "data" / f"demo-{condition.removal}-r{condition.drop:g}-s{seed}" / MANIFEST
        )
    elif condition.dataset in ("emotions", "birds"):
        config = load_config(REPO / "configs" / f"mulan_{condition.dataset}.yaml")
        config.data.manifest = str(SHARED / f"mulan_{condition.dataset}" / f"{condition.dataset}-train.arff")
        config.data.test_manifest = str(SHARED / f"mulan_{condition.dataset}" / f"{condition.dataset}-test.arff")
    elif condition.dataset == "fsdd":
        config = load_config(REPO / "configs" / "fsdd_mixtures.yaml")
        config.data.manifest = str(
            RESULTS / "data" / f"fsdd-{condition.removal}-r{condition.drop:g}-s{seed}" / MANIFEST
        )
    else:
        raise ValueError(f"unknown dataset {condition.dataset!r}")
    if condition.epochs:
        config.train.epochs = condition.epochs
    if condition.channels:
        config.model.channels = list(condition.channels)
    config.train.seed = seed
    return config.core()


def prepare_data(condition: Condition, seed: int) -> None:
    """Write the generated datasets (demo, FSDD mixtures) of one seed; MULAN needs nothing."""
    config = _config(condition, seed)
    manifest = Path(config.data.manifest)
    directory = manifest.parent
    if condition.dataset not in ("demo", "fsdd") or manifest.is_file():
        return
    if condition.dataset == "demo":
        make_demo(directory, DemoConfig(seed=seed, drop_fraction=condition.drop, removal=condition.removal))
    else:
        from raymlc.config import MixtureConfig
        from raymlc.data.mixtures import make_fsdd_mixtures

        mixture = MixtureConfig(seed=seed, drop_fraction=condition.drop, removal=condition.removal)
        make_fsdd_mixtures(SHARED / "fsdd_dev" / "recordings", directory, mixture)


@functools.lru_cache(maxsize=2)
def load(condition: Condition, seed: int) -> tuple[RunConfig, Dataset]:
    """The seed's dataset with observed train labels; val and test carry the complete labels."""
    config = _config(condition, seed)
    if condition.dataset in ("demo", "fsdd"):
        return config, load_dataset(config)
    dataset = load_dataset(config)
    return config, replace(dataset, train=remove_positives(dataset.train, condition.removal, condition.drop, seed))


@functools.lru_cache(maxsize=8)
def load_labels(condition: Condition, seed: int) -> Dataset:
    """Like `load`, but only the label matrices (no audio decoded): what reporting needs."""
    if condition.dataset not in ("demo", "fsdd"):
        return load(condition, seed)[1]
    table = load_manifest_table(_config(condition, seed))
    vocabulary = LabelVocabulary.from_table(table)
    return Dataset(vocabulary, *(_label_split(table, vocabulary, split) for split in ("train", "val", "test")))


def _label_split(table: pa.Table, vocabulary: LabelVocabulary, split: str) -> SplitData:
    rows = table.filter(pc.equal(table["split"], split))
    ids = rows["clip_id"].to_pylist()
    labels, removed, explicit = (vocabulary.encode(rows[c].to_pylist(), ids) for c in LABEL_COLUMNS)
    return SplitData(ids, np.zeros((len(ids), 0), np.float32), labels, removed, explicit)


# ---------------------------------------------------------------- flags


def top_flags(scores: np.ndarray, train: SplitData, percent: float) -> np.ndarray:
    """Bool [N, C]: per class the top `percent` % implicit negatives by score."""
    positives, explicit = train.targets.astype(bool), train.explicit_negatives.astype(bool)
    budget = flag_budget(implicit_negative_counts(positives, explicit), percent=percent)
    return flag_matrix(scores, positives, explicit, budget)


def cleanlab_flags(scores: np.ndarray, train: SplitData) -> np.ndarray:
    """cleanlab's per-class label issues that sit on implicit negatives (the only ones a mask may drop)."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    labels = [np.flatnonzero(row).tolist() for row in train.targets]
    issues = find_multilabel_issues_per_class(labels, scores, n_jobs=1)
    issues = np.stack(issues, axis=1) if isinstance(issues, list) else np.asarray(issues)
    implicit = (train.targets == 0) & (train.explicit_negatives == 0)
    return issues.astype(bool) & implicit


# ---------------------------------------------------------------- models


def _cache_path(condition: Condition, seed: int, spec: str) -> Path:
    if spec == "oracle":
        return _oracle_path(condition, seed)
    key = _key(_config(condition, seed).model_dump_json(exclude={"thresholds"}))
    return RESULTS / "models" / condition.name / f"s{seed}-{key}" / f"{spec}.npz"


def _key(*parts: str) -> str:
    """Short hash of `parts` and the training code."""
    code = "".join(map(inspect.getsource, TRAINING_CODE))
    return hashlib.sha1("".join([*parts, code]).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=16)
def _oracle_path(condition: Condition, seed: int) -> Path:
    """The oracle learns the complete labels, so the removals and drops of a dataset share it when their
    clips and complete labels are the same: keyed by the config without its manifest path and by that content."""
    config = _config(condition, seed)
    settings = config.model_dump_json(exclude={"thresholds": True, "data": {"manifest"}})
    key = _key(settings, _complete_data_digest(config))
    return RESULTS / "models" / condition.oracle_name / f"s{seed}-{key}" / "oracle.npz"


def _complete_data_digest(config: RunConfig) -> str:
    """Hash of the manifest's clips (audio bytes, crops, splits) with their complete labels, or of a feature file."""
    digest = hashlib.sha1()
    manifest = Path(config.data.manifest)
    if manifest.suffix != ".parquet":  # MULAN: features and complete labels in one file
        digest.update(manifest.read_bytes())
        return digest.hexdigest()
    table = load_manifest_table(config)
    digest.update(json.dumps(LabelVocabulary.from_table(table).names).encode())
    for row in table.to_pylist():
        complete = sorted(row["labels"] + row["removed_labels"])
        digest.update(json.dumps([row["clip_id"], row["split"], row["start_s"], row["end_s"], complete]).encode())
        digest.update(Path(row["audio"]).read_bytes())
    return digest.hexdigest()


def _teacher_scores(condition: Condition, seed: int, spec: str) -> np.ndarray:
    with np.load(_cache_path(condition, seed, spec)) as stored:
        return 1 / (1 + np.exp(-stored["train"]))


def crossfit_scores(condition: Condition, seed: int, folds: int) -> np.ndarray:
    """Out-of-sample train scores: fold j scored by the teacher trained without fold j."""
    dataset = load_labels(condition, seed)
    scores = np.zeros_like(dataset.train.targets)
    for j, (_, held_out) in enumerate(_folds(len(dataset.train), folds, seed)):
        with np.load(_cache_path(condition, seed, f"teacher-cf{folds}-{j}")) as stored:
            scores[held_out] = 1 / (1 + np.exp(-stored["train"]))
    return scores


def _folds(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))


def mask_for(spec: str, condition: Condition, seed: int, train: SplitData) -> np.ndarray | None:
    """The flag set (bool [N, C]) a model spec masks: None for teacher/oracle."""
    kind, _, arg = spec.partition("@")
    if kind == "student":
        return top_flags(_teacher_scores(condition, seed, "teacher"), train, float(arg))
    if kind == "random":
        flags = top_flags(_teacher_scores(condition, seed, "teacher"), train, float(arg))
        positives, explicit = train.targets.astype(bool), train.explicit_negatives.astype(bool)
        return random_flags(positives, explicit, flags.sum(axis=0), seed)
    if kind == "cleanlab":
        return cleanlab_flags(_teacher_scores(condition, seed, "teacher"), train)
    if kind == "perfect":
        return train.removed.astype(bool)
    return None


def train_model(condition: Condition, seed: int, spec: str) -> str:
    """Train one model of a seed (if not cached); store its logits on every split and its flags."""
    path = _cache_path(condition, seed, spec)
    if path.is_file():
        return spec
    config, dataset = load(condition, seed)
    train, rows = dataset.train, np.arange(len(dataset.train))
    if spec == "oracle":
        train = replace(train, targets=np.maximum(train.targets, train.removed))
    if spec.startswith("teacher-cf"):  # "teacher-cf{K}-{j}": trained without fold j, scores fold j
        folds, j = map(int, spec.removeprefix("teacher-cf").split("-"))
        fit_rows, rows = _folds(len(train), folds, seed)[j]
        train = _subset(train, fit_rows)
    flags = mask_for(spec, condition, seed, train)
    started = time.perf_counter()
    torch.manual_seed(seed)  # paired runs: every model of a seed starts from the same weights
    model = new_model(config, replace(dataset, train=train))
    window = window_samples(config)
    mask = None if flags is None else (~flags).astype(np.float32)
    fit(model, train, None, config.train, window, mask=mask)
    held = _subset(dataset.train, rows)
    outputs = {
        name: predict(model, data, config.train.eval_batch_size, window)[0]
        for name, data in (("train", held), ("val", dataset.val), ("test", dataset.test))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = np.zeros_like(train.targets, dtype=bool) if flags is None else flags
    np.savez(path.with_suffix(".tmp.npz"), flags=flags, **outputs)
    os.replace(path.with_suffix(".tmp.npz"), path)
    log(f"{condition.name} seed {seed}: {spec} trained in {time.perf_counter() - started:.0f}s")
    return spec


def _subset(data: SplitData, rows: np.ndarray) -> SplitData:
    inputs = [data.inputs[i] for i in rows] if data.is_audio else data.inputs[rows]
    return SplitData(
        [data.clip_ids[i] for i in rows],
        inputs,
        data.targets[rows],
        data.removed[rows],
        data.explicit_negatives[rows],
    )


def _init_worker() -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------- scheduling


def run(condition: Condition, seeds: list[int], percents: list[float], crossfit: int, jobs: int) -> None:
    """Train every model of every seed, `jobs` at a time, seed by seed (a finished seed is usable early)."""
    students = [f"student@{p:g}" for p in percents]
    # (extra, seed, order, spec): the models of the main comparison first, seed by seed; then the
    # extras (cleanlab baseline, cross-fitted teachers).
    ready = [(0, seed, 0, "teacher") for seed in seeds]
    ready += [(0, seed, 3, spec) for seed in seeds for spec in ("perfect", "oracle")]
    ready += [(1, seed, 4, f"teacher-cf{crossfit}-{j}") for seed in seeds for j in range(crossfit)]
    with ProcessPoolExecutor(jobs, initializer=_init_worker) as pool:
        for future in [pool.submit(prepare_data, condition, seed) for seed in seeds]:
            future.result()
        pending: dict[Future, tuple[int, str]] = {}
        done: set[tuple[int, str]] = set()
        while ready or pending:
            ready.sort()
            while ready and len(pending) < jobs:
                _, seed, _, spec = ready.pop(0)
                pending[pool.submit(train_model, condition, seed, spec)] = (seed, spec)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                seed, spec = pending.pop(future)
                future.result()
                done.add((seed, spec))
                if spec == "teacher":
                    ready += [(0, seed, 1, student) for student in students] + [(1, seed, 2, "cleanlab")]
                if spec in students and all((seed, student) in done for student in students):
                    ready.append((0, seed, 2, f"random@{best_percent(condition, seed, percents):g}"))


def _logits(condition: Condition, seed: int, spec: str) -> dict[str, np.ndarray]:
    with np.load(_cache_path(condition, seed, spec)) as stored:
        return {key: stored[key] for key in stored.files}


def best_percent(condition: Condition, seed: int, percents: list[float]) -> float:
    """The p whose student has the best validation mAP (val labels are complete)."""
    dataset = load_labels(condition, seed)
    val_map = [
        summarize(dataset.val.targets, _logits(condition, seed, f"student@{p:g}")["val"])["map"] for p in percents
    ]
    return percents[int(np.argmax(val_map))]


# ---------------------------------------------------------------- results


def test_metrics(val_targets: np.ndarray, test_targets: np.ndarray, outputs: dict[str, np.ndarray]) -> dict:
    """Test metrics at 0.5 plus macro-F1 with per-class thresholds tuned on val."""
    metrics = summarize(test_targets, 1 / (1 + np.exp(-outputs["test"])))
    thresholds = fit_per_class(outputs["val"], val_targets)
    metrics["macro_f1_tuned"] = f1_scores(test_targets, per_class(outputs["test"], thresholds))[1]
    return metrics


def removed_auc(train: SplitData, scores: np.ndarray) -> float | None:
    """Mean per-class AUC of the teacher's scores: removed positives vs true negatives (implicit only)."""
    aucs = []
    for c in range(train.targets.shape[1]):
        implicit = (train.targets[:, c] == 0) & (train.explicit_negatives[:, c] == 0)
        truth = train.removed[implicit, c]
        if 0 < truth.sum() < len(truth):
            aucs.append(roc_auc_score(truth, scores[implicit, c]))
    return float(np.mean(aucs)) if aucs else None


def seed_results(condition: Condition, seed: int, percents: list[float], crossfit: int) -> dict:
    dataset = load_labels(condition, seed)
    train = dataset.train
    best = best_percent(condition, seed, percents)
    names = {"teacher": "teacher", "student": f"student@{best:g}", "random": f"random@{best:g}"}
    names |= {"cleanlab": "cleanlab", "perfect": "perfect", "oracle": "oracle"}
    names |= {f"student@{p:g}": f"student@{p:g}" for p in percents}
    result: dict = {"seed": seed, "chosen_percent": best, "models": {}, "flags": {}}
    for name, spec in names.items():
        if name == "cleanlab" and not _cache_path(condition, seed, spec).is_file():
            continue  # an extra that was not trained (yet)
        outputs = _logits(condition, seed, spec)
        result["models"][name] = test_metrics(dataset.val.targets, dataset.test.targets, outputs)
        result["models"][name]["val_map"] = summarize(dataset.val.targets, outputs["val"])["map"]
        if spec not in ("teacher", "oracle", "perfect"):
            result["flags"][name] = flag_precision_recall(outputs["flags"], train.removed.astype(bool))
    teacher_scores = _teacher_scores(condition, seed, "teacher")
    result["teacher_removed_auc"] = removed_auc(train, teacher_scores)
    if crossfit and all(_cache_path(condition, seed, f"teacher-cf{crossfit}-{j}").is_file() for j in range(crossfit)):
        scores = crossfit_scores(condition, seed, crossfit)
        result["crossfit_removed_auc"] = removed_auc(train, scores)
        for p in percents:
            for kind, s in (("in_sample", teacher_scores), (f"crossfit{crossfit}", scores)):
                flags = top_flags(s, train, p)
                result["flags"][f"{kind}@{p:g}"] = flag_precision_recall(flags, train.removed.astype(bool))
    models_ = result["models"]
    teacher, student = models_["teacher"]["map"], models_["student"]["map"]
    result["gain_fraction"] = recovered_fraction(student, models_["perfect"]["map"], teacher)
    result["gap_recovered"] = recovered_fraction(student, models_["oracle"]["map"], teacher)
    return result


def _columns(rows: list[dict]) -> dict[str, list[float]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def summarize_condition(results: list[dict]) -> dict:
    """Means and standard deviations over seeds, and the per-seed win counts."""
    summary: dict = {"seeds": len(results), "models": {}}
    for name in results[0]["models"] | {"cleanlab": None}:
        having = [r["models"][name] for r in results if name in r["models"]]
        if having:
            summary["models"][name] = {
                key: (float(np.mean(v)), float(np.std(v))) for key, v in _columns(having).items()
            }
            summary["models"][name]["seeds"] = len(having)
    for reference in ("teacher", "random", "cleanlab"):
        pairs = [
            (r["models"]["student"]["map"], r["models"][reference]["map"]) for r in results if reference in r["models"]
        ]
        summary[f"student_beats_{reference}"] = f"{sum(s > ref for s, ref in pairs)}/{len(pairs)}"
    fractions = [r["gain_fraction"] for r in results if r["gain_fraction"] is not None]
    summary["gain_fraction_mean"] = float(np.mean(fractions)) if fractions else None
    summary["gain_fraction_median"] = float(np.median(fractions)) if fractions else None
    summary["gain_fraction_seeds"] = len(fractions)  # those whose perfect mask beats the teacher
    gaps = [r["gap_recovered"] for r in results if r["gap_recovered"] is not None]
    summary["gap_recovered_mean"] = float(np.mean(gaps)) if gaps else None
    return summary


def print_table(condition: Condition, results: list[dict], summary: dict) -> None:
    print(f"\n## {condition.name}: {summary['seeds']} seeds (test split; mean ± sd over seeds)")
    print("| model | seeds | mAP | lwlrap | d′ | macro-F1 @0.5 | macro-F1 tuned |")
    print("|---|---|---|---|---|---|---|")
    for name, values in summary["models"].items():
        cells = [f"{values[k][0]:.3f} ± {values[k][1]:.3f}" for k in ("map", "lwlrap", "d_prime")]
        cells += [f"{values[k][0]:.3f}" for k in ("macro_f1", "macro_f1_tuned")]
        print(f"| {name} | {values['seeds']} | " + " | ".join(cells) + " |")
    print("\n| seed | p (val) | teacher | student | random | cleanlab | perfect | oracle | gain frac | flag P / R |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["models"]
        gain = "n/a" if r["gain_fraction"] is None else f"{r['gain_fraction']:.2f}"
        flags = r["flags"]["student"]
        row = [f"{m[k]['map']:.3f}" if k in m else "–" for k in MODEL_COLUMNS]
        pr = f"{flags['precision']:.2f} / {flags['recall']:.2f}" if flags["precision"] is not None else "n/a"
        print(f"| {r['seed']} | {r['chosen_percent']:g} % | " + " | ".join(row) + f" | {gain} | {pr} |")
    print(
        f"\nstudent beats teacher in {summary['student_beats_teacher']} seeds, the random control in "
        f"{summary['student_beats_random']}, cleanlab in {summary['student_beats_cleanlab']}; gain fraction mean "
        f"{_text(summary['gain_fraction_mean'])}, median {_text(summary['gain_fraction_median'])} (over the "
        f"{summary['gain_fraction_seeds']} seeds whose perfect mask beats the teacher); gap recovered "
        f"mean {_text(summary['gap_recovered_mean'])}"
    )
    aucs = [r["teacher_removed_auc"] for r in results if r["teacher_removed_auc"] is not None]
    print("teacher AUC, removed positives vs true negatives: " + ", ".join(f"{a:.3f}" for a in aucs))
    cleanlab = [r["flags"]["cleanlab"] for r in results if "cleanlab" in r["flags"]]
    print(
        "cleanlab flags (count, precision, recall): "
        + ", ".join(f"({c['count']}, {_text(c['precision'])}, {_text(c['recall'])})" for c in cleanlab)
    )
    with_crossfit = [r for r in results if "crossfit_removed_auc" in r]
    if with_crossfit:
        print(f"flag precision / recall, in-sample vs cross-fitted teachers ({len(with_crossfit)} seeds, mean):")
        for key in [k for k in with_crossfit[0]["flags"] if k.startswith("crossfit")]:
            kind, p = key.split("@")
            cells = []
            for name in (f"in_sample@{p}", key):
                precision = np.mean([r["flags"][name]["precision"] or 0 for r in with_crossfit])
                recall = np.mean([r["flags"][name]["recall"] or 0 for r in with_crossfit])
                cells.append(f"{precision:.3f} / {recall:.3f}")
            print(f"  p = {p} %: in-sample {cells[0]}, {kind} {cells[1]}")


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("demo", "emotions", "birds", "fsdd"), default="demo")
    parser.add_argument("--removal", choices=("structured", "random"), default="structured")
    parser.add_argument("--drop", type=float, default=0.3, help="fraction of train positives removed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--percents", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="candidate p (%%)")
    parser.add_argument("--crossfit", type=int, default=0, help="K-fold teachers for out-of-sample scores (0: off)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="override the CNN's channels")
    parser.add_argument("--jobs", type=int, default=2, help="training processes (one torch thread each)")
    parser.add_argument("--report-only", action="store_true", help="report from the cached models, train nothing")
    args = parser.parse_args()
    channels = tuple(args.channels) if args.channels else None
    condition = Condition(args.dataset, args.removal, args.drop, args.epochs, channels)
    started = time.perf_counter()
    if not args.report_only:
        run(condition, args.seeds, args.percents, args.crossfit, args.jobs)
    results = [seed_results(condition, seed, args.percents, args.crossfit) for seed in args.seeds]
    summary = summarize_condition(results)
    summary["wall_seconds"] = time.perf_counter() - started
    output = RESULTS / f"{condition.name}.json"
    if args.report_only and output.is_file():  # keep the wall time of the run that trained
        summary["wall_seconds"] = json.loads(output.read_text())["summary"].get("wall_seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"condition": condition.__dict__, "percents": args.percents, "summary": summary, "seeds": results}
    output.write_text(json.dumps(payload, indent=2) + "\n")
    print_table(condition, results, summary)


if __name__ == "__main__":
    main()
