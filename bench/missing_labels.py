"""Missing-label benchmark: does teacher–student loss masking recover what incomplete labels cost?

Each condition (dataset, removal kind, drop fraction r) and seed runs the library's in-memory loop,
`raymlc.teacher_student.run_teacher_student` (teacher; student@p per `--percents`, the one best on the complete
val split being **student**; random-mask control; perfect mask; oracle; paired runs), plus **cleanlab**
(cleanlab 2.9's `find_multilabel_issues_per_class` on the same teacher scores, its flags on implicit negatives
masked). On the complete test split: mAP, lwlrap, d′, macro-F1 at 0.5 and tuned on val, gain fraction, gap
recovered, flag precision/recall, the teacher's AUC for removed positives vs true negatives. `--crossfit K`
flags with K-fold cross-fitted teacher scores. Datasets: `demo` (configs/demo.yaml), `emotions`, `birds` (MULAN;
r of the given labels removed by `raymlc.data.synthetic.remove_positives`), `fsdd` (digit mixtures); MULAN and
FSDD need ../shared/data.

    .venv/bin/python bench/missing_labels.py --dataset demo --removal structured --drop 0.3 --seeds 0 1 2 3 4

Models' logits are cached under bench/results/missing_labels/ (keyed by condition, seed, model, flags and the
training code; the oracle by its clips and complete labels, shared by a dataset's conditions); results go to
bench/results/missing_labels/<condition>.json. Seeds run side by side, models in `--jobs` 1-thread processes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from raymlc import features, flagging, losses, models, scoring, teacher_student, training
from raymlc.config import DemoConfig, MixtureConfig, TaggerConfig, load_config
from raymlc.data import LabelVocabulary, stream
from raymlc.data.dataset import Dataset, SplitData, load_dataset, load_manifest_table
from raymlc.data.demo import make_demo
from raymlc.data.mixtures import make_fsdd_mixtures
from raymlc.data.synthetic import remove_positives
from raymlc.flagging import FlagResult, flags_from_pairs
from raymlc.teacher_student import ModelSpec, Outputs, flag_report, model_metrics, recovered, run_teacher_student

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "missing_labels"
TRAINING_CODE = (features, flagging, losses, models, scoring, stream, teacher_student, training)
CLEANLAB = threading.Lock()
MODEL_COLUMNS = ("teacher", "student", "random", "cleanlab", "perfect_mask", "oracle")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Condition:
    dataset: str
    removal: str
    drop: float
    crossfit: int = 0
    epochs: int | None = None  # None: the dataset config's epochs
    channels: tuple[int, ...] | None = None  # None: the dataset config's CNN channels

    @property
    def data_name(self) -> str:
        return f"{self.dataset}-{self.removal}-r{self.drop:g}"

    @property
    def name(self) -> str:
        name = (
            self.data_name + (f"-cf{self.crossfit}" if self.crossfit else "") + (f"-e{self.epochs}" * bool(self.epochs))
        )
        return name + ("-c" + "-".join(map(str, self.channels)) if self.channels else "")


def _config(condition: Condition, seed: int) -> TaggerConfig:
    if condition.dataset in ("emotions", "birds"):
        config = load_config(REPO / "configs" / f"mulan_{condition.dataset}.yaml")
        config.data.manifest = str(SHARED / f"mulan_{condition.dataset}" / f"{condition.dataset}-train.arff")
        config.data.test_manifest = str(SHARED / f"mulan_{condition.dataset}" / f"{condition.dataset}-test.arff")
    else:
        config = load_config(REPO / "configs" / {"demo": "demo.yaml", "fsdd": "fsdd_mixtures.yaml"}[condition.dataset])
        config.data.manifest = str(RESULTS / "data" / f"{condition.data_name}-s{seed}" / "manifest.parquet")
    config.train.seed, config.flagging.crossfit_folds = seed, condition.crossfit
    config.train.epochs = condition.epochs or config.train.epochs
    config.model.channels = list(condition.channels or config.model.channels)
    return config


def prepare_data(condition: Condition, seed: int) -> None:
    """Write the generated datasets (demo, FSDD mixtures) of one seed; MULAN needs nothing."""
    manifest = Path(_config(condition, seed).data.manifest)
    if condition.dataset == "demo" and not manifest.is_file():
        make_demo(manifest.parent, DemoConfig(seed=seed, drop_fraction=condition.drop, removal=condition.removal))
    if condition.dataset == "fsdd" and not manifest.is_file():
        mixture = MixtureConfig(seed=seed, drop_fraction=condition.drop, removal=condition.removal)
        make_fsdd_mixtures(SHARED / "fsdd_dev" / "recordings", manifest.parent, mixture)


@functools.lru_cache(maxsize=4)
def load(condition: Condition, seed: int, decode: bool) -> tuple[TaggerConfig, Dataset]:
    """The seed's dataset with observed train labels (val and test complete); labels only unless `decode`."""
    config = _config(condition, seed)
    dataset = load_dataset(config, decode)
    if condition.dataset in ("emotions", "birds"):  # complete labels given: remove r of the train positives here
        train = dataset.train
        removed = remove_positives(train.targets, condition.removal, condition.drop, np.random.default_rng([seed, 7]))
        train = replace(train, targets=np.where(removed, 0, train.targets), removed=removed.astype(np.float32))
        dataset = replace(dataset, train=train)
    return config, dataset


def cleanlab_flags(scores: np.ndarray, train: SplitData) -> FlagResult:
    """cleanlab's per-class label issues that sit on implicit negatives (the only ones a mask may drop)."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    labels = [np.flatnonzero(row).tolist() for row in train.targets]
    with CLEANLAB:  # not thread-safe: two seeds' calls at once mix their classes
        issues = find_multilabel_issues_per_class(labels, scores, n_jobs=1)
    issues = np.stack(issues, axis=1) if isinstance(issues, list) else np.asarray(issues)
    rows, classes = np.nonzero(issues.astype(bool) & (train.targets == 0) & (train.explicit_negatives == 0))
    return flags_from_pairs(rows, classes, train.targets.shape[1])


# ---------------------------------------------------------------- cached training


def _key(*parts: str) -> str:
    """Short hash of `parts` and the training code."""
    code = "".join(map(inspect.getsource, TRAINING_CODE))
    return hashlib.sha1("".join([*parts, code]).encode()).hexdigest()[:10]


def _cache_path(condition: Condition, seed: int, spec: ModelSpec) -> Path:
    config = _config(condition, seed)
    if spec.name == "oracle":  # complete labels: the removals and drops of a dataset share it
        settings = config.model_dump_json(exclude={"thresholds": True, "flagging": True, "data": {"manifest"}})
        return (
            RESULTS
            / "models"
            / f"{condition.dataset}-complete"
            / f"s{seed}-{_key(settings, _data_digest(condition, seed))}.npz"
        )
    flags = b"" if spec.flags is None else np.stack(spec.flags.flag_pairs()).tobytes()
    key = _key(config.model_dump_json(exclude={"thresholds"}), hashlib.sha1(flags).hexdigest())
    return RESULTS / "models" / condition.name / f"s{seed}-{spec.name}-{key}.npz"


@functools.lru_cache(maxsize=16)
def _data_digest(condition: Condition, seed: int) -> str:
    """Hash of the clips (audio bytes, crops, splits) with their complete labels, or of a MULAN feature file."""
    config, digest = _config(condition, seed), hashlib.sha1()
    if not config.data.manifest.endswith(".parquet"):
        digest.update(Path(config.data.manifest).read_bytes())
        return digest.hexdigest()
    table = load_manifest_table(config)
    digest.update(json.dumps(LabelVocabulary.from_table(table).names).encode())
    for row in table.to_pylist():
        complete = sorted(row["labels"] + row["removed_labels"])
        digest.update(json.dumps([row["clip_id"], row["split"], row["start_s"], row["end_s"], complete]).encode())
        digest.update(Path(row["audio"]).read_bytes())
    return digest.hexdigest()


def train_cached(condition: Condition, seed: int, spec: ModelSpec) -> Outputs:
    """`teacher_student.train_and_score` of one model, or its cached logits."""
    path = _cache_path(condition, seed, spec)
    if not path.is_file():
        started = time.perf_counter()
        config, dataset = load(condition, seed, decode=True)
        outputs = teacher_student.train_and_score(config, dataset, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), **outputs)
        os.replace(path.with_suffix(".tmp.npz"), path)
        log(f"{condition.name} seed {seed}: {spec.name} trained in {time.perf_counter() - started:.0f}s")
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def run_seed(condition: Condition, seed: int, percents: list[float], pool: ProcessPoolExecutor) -> dict:
    """One seed's teacher–student run (models trained in `pool`), cleanlab on its teacher, and the metrics."""
    config, dataset = load(condition, seed, decode=False)

    def trainer(specs: list[ModelSpec]) -> list[Outputs]:
        return [future.result() for future in [pool.submit(train_cached, condition, seed, s) for s in specs]]

    run = run_teacher_student(config, dataset, percents, trainer)
    run.flags["cleanlab"] = cleanlab_flags(run.teacher_scores, dataset.train)
    (run.outputs["cleanlab"],) = trainer([ModelSpec("cleanlab", flags=run.flags["cleanlab"])])
    metrics = {name: model_metrics(dataset, outputs) for name, outputs in run.outputs.items()}
    return {
        "seed": seed,
        "chosen_percent": run.chosen_percent,
        "models": metrics,
        "flags": {name: flag_report(dataset.train, flags) for name, flags in run.flags.items()},
        "teacher_removed_auc": removed_auc(dataset.train, run.teacher_scores),
        **recovered({name: m["map"] for name, m in metrics.items()}),
    }


def removed_auc(train: SplitData, scores: np.ndarray) -> float | None:
    """Mean per-class AUC of the teacher's scores: removed positives vs true negatives (implicit only)."""
    aucs = []
    for c in range(train.targets.shape[1]):
        implicit = (train.targets[:, c] == 0) & (train.explicit_negatives[:, c] == 0)
        truth = train.removed[implicit, c]
        if 0 < truth.sum() < len(truth):
            aucs.append(roc_auc_score(truth, scores[implicit, c]))
    return float(np.mean(aucs)) if aucs else None


# ---------------------------------------------------------------- results


def summarize_condition(results: list[dict]) -> dict:
    """Means and standard deviations over seeds, and the per-seed win counts."""
    summary: dict = {"seeds": len(results), "models": {}}
    for name in results[0]["models"]:
        rows = [r["models"][name] for r in results]
        summary["models"][name] = {
            key: (float(np.mean([m[key] for m in rows])), float(np.std([m[key] for m in rows]))) for key in rows[0]
        }
    for reference in ("teacher", "random", "cleanlab"):
        wins = sum(r["models"]["student"]["map"] > r["models"][reference]["map"] for r in results)
        summary[f"student_beats_{reference}"] = f"{wins}/{len(results)}"
    for key in ("gain_fraction", "gap_recovered"):
        values = [r[key] for r in results if r[key] is not None]  # defined where the reference beats the teacher
        summary[f"{key}_mean"] = float(np.mean(values)) if values else None
        summary[f"{key}_median"] = float(np.median(values)) if values else None
        summary[f"{key}_seeds"] = len(values)
    return summary


def _text(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(condition: Condition, results: list[dict], summary: dict) -> None:
    print(f"\n## {condition.name}: {summary['seeds']} seeds (test split; mean ± sd over seeds)")
    print("| model | mAP | lwlrap | d′ | macro-F1 @0.5 | macro-F1 tuned |\n|---|---|---|---|---|---|")
    for name, values in summary["models"].items():
        cells = [f"{values[k][0]:.3f} ± {values[k][1]:.3f}" for k in ("map", "lwlrap", "d_prime")]
        cells += [f"{values[k][0]:.3f}" for k in ("macro_f1", "macro_f1_tuned")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| seed | p (val) | " + " | ".join(MODEL_COLUMNS) + " | gain frac | flag P / R | cleanlab flags (n, P) |")
    print("|---" * (len(MODEL_COLUMNS) + 5) + "|")
    for r in results:
        flags, cleanlab = r["flags"]["student"], r["flags"]["cleanlab"]
        cells = [f"{r['models'][name]['map']:.3f}" for name in MODEL_COLUMNS]
        cells += [_text(r["gain_fraction"], 2), f"{_text(flags['precision'], 2)} / {_text(flags['recall'], 2)}"]
        cells.append(f"{cleanlab['count']}, {_text(cleanlab['precision'], 2)}")
        print(f"| {r['seed']} | {r['chosen_percent']:g} % | " + " | ".join(cells) + " |")
    print(
        f"\nstudent beats teacher in {summary['student_beats_teacher']} seeds, the random control in "
        f"{summary['student_beats_random']}, cleanlab in {summary['student_beats_cleanlab']}; gain fraction mean "
        f"{_text(summary['gain_fraction_mean'])}, median {_text(summary['gain_fraction_median'])} (over the "
        f"{summary['gain_fraction_seeds']} seeds whose perfect mask beats the teacher); gap recovered "
        f"mean {_text(summary['gap_recovered_mean'])}; teacher AUC, removed positives vs true negatives: "
        + ", ".join(_text(r["teacher_removed_auc"]) for r in results)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("demo", "emotions", "birds", "fsdd"), default="demo")
    parser.add_argument("--removal", choices=("structured", "random"), default="structured")
    parser.add_argument("--drop", type=float, default=0.3, help="fraction of train positives removed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--percents", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="candidate p (%%)")
    parser.add_argument("--crossfit", type=int, default=0, help="flag with K-fold cross-fitted teachers (0: off)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="override the CNN's channels")
    parser.add_argument("--jobs", type=int, default=2, help="training processes (one torch thread each)")
    args = parser.parse_args()
    channels = tuple(args.channels) if args.channels else None
    condition = Condition(args.dataset, args.removal, args.drop, args.crossfit, args.epochs, channels)
    started = time.perf_counter()
    for seed in args.seeds:
        prepare_data(condition, seed)
    with (
        ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ThreadPoolExecutor(args.jobs) as seeds,
    ):
        results = list(seeds.map(lambda seed: run_seed(condition, seed, args.percents, pool), args.seeds))
    summary = summarize_condition(results) | {"wall_seconds": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"condition": condition.__dict__, "percents": args.percents, "summary": summary, "seeds": results}
    (RESULTS / f"{condition.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print_table(condition, results, summary)


if __name__ == "__main__":
    main()
