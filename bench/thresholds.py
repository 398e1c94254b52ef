"""Decision rules compared: test macro-/micro-F1 of fixed, tuned, prior-shift, sigmoidF1 and adaptive thresholds.

For each dataset one BCE tagger and one sigmoidF1 tagger are trained (`teacher_student.train_and_score`); every
rule then decides from the frozen BCE tagger's test logits (sigmoidF1 @ 0.5 from its own model):

* fixed 0.5; per-class thresholds tuned for F1 on val; prior shift fitted on val;
* adaptive IDF only (λ = 1), KNN only (λ = 0) and fused (λ from `ThresholdConfig`), each fitted on val
  (neighbours from the training bank) and on train (each clip excluded from its own neighbours).

Datasets: the demo (`make_demo` defaults, `configs/demo.yaml`) with observed (incomplete) and clean train
labels; MULAN emotions and birds (`configs/mulan_*.yaml`, skipped without ../shared/data); FSDD digit
mixtures (`raymlc.data.mixtures` defaults: 1-3 spoken digits per 2-s clip at 8 kHz, speakers split, but 30 % of
the train positives removed at random; `configs/fsdd_mixtures.yaml`; skipped without ../shared/data). Demo
data and mixtures are written once under `--data-dir` and reused.

"train, flag mask": the fused fit on train with the teacher–student mask `1 − flags` (`raymlc.flagging`, top
1 % of each class's implicit negatives flagged, the BCE tagger as its own in-sample teacher); "val" fits need
no mask (the flags are a training-split notion).

    .venv/bin/python bench/thresholds.py    # writes bench/results/thresholds.json

Training dominates: 10 models, 48 min on a shared, loaded 2-core machine (demo CNN epochs 25-90 s; about
15 min when the demo runs at ~10 s/epoch). Trained outputs are cached in bench/results/cache, so a rerun
that only changes threshold settings takes about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raymlc import features, losses, models, scoring, teacher_student, training
from raymlc.config import DemoConfig, FlaggingConfig, MixtureConfig, TaggerConfig, ThresholdConfig, load_config
from raymlc.data.dataset import Dataset, load_dataset
from raymlc.data.demo import make_demo
from raymlc.data.mixtures import make_fsdd_mixtures
from raymlc.decision_rules import adaptive, fit_per_class, fit_prior_shift, fixed, per_class, prior_shift
from raymlc.metrics import f1_scores
from raymlc.teacher_student import ModelSpec, loss_mask, top_percent_flags, train_and_score
from raymlc.thresholds import MemoryBank, fit_thresholds, idf, thresholds_for

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SPLITS = ("train", "val", "test")
TRAINING_CODE = (features, losses, models, scoring, teacher_student, training)
Outputs = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (logits [N, C], embeddings [N, E])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- datasets


def demo_config(data_dir: Path, label_source: str) -> TaggerConfig:
    manifest = data_dir / "demo" / "manifest.parquet"
    if not manifest.is_file():
        log(f"making the demo dataset in {manifest.parent}")
        make_demo(manifest.parent, DemoConfig())
    config = load_config(REPO / "configs" / "demo.yaml")
    config.data.manifest, config.data.label_source = str(manifest), label_source
    return config


def mulan_config(name: str) -> TaggerConfig | None:
    path = REPO / "configs" / f"mulan_{name}.yaml"
    if not (SHARED / f"mulan_{name}").is_dir() or not path.is_file():
        return None
    config = load_config(path)
    config.data.manifest = str(SHARED / f"mulan_{name}" / f"{name}-train.arff")
    config.data.test_manifest = str(SHARED / f"mulan_{name}" / f"{name}-test.arff")
    return config


def fsdd_config(data_dir: Path) -> TaggerConfig | None:
    recordings = SHARED / "fsdd_dev" / "recordings"
    if not recordings.is_dir():
        return None
    manifest = data_dir / "fsdd_mix" / "manifest.parquet"
    if not manifest.is_file():
        log(f"making FSDD digit mixtures in {manifest.parent}")
        make_fsdd_mixtures(recordings, manifest.parent, MixtureConfig(removal="random"))
    config = load_config(REPO / "configs" / "fsdd_mixtures.yaml")
    config.data.manifest = str(manifest)
    return config


def benchmark_configs(data_dir: Path, names: list[str]) -> dict[str, TaggerConfig]:
    builders: dict[str, Callable[[], TaggerConfig | None]] = {
        "demo-observed": lambda: demo_config(data_dir, "observed"),
        "demo-clean": lambda: demo_config(data_dir, "clean"),
        "emotions": lambda: mulan_config("emotions"),
        "birds": lambda: mulan_config("birds"),
        "fsdd-mix-observed": lambda: fsdd_config(data_dir),
    }
    configs = {}
    for name in names:
        config = builders[name]()
        if config is None:
            log(f"skipping {name}: ../shared/data (or its config) is not present")
        else:
            configs[name] = config
    return configs


# ---------------------------------------------------------------- models and rules


def train_outputs(config: TaggerConfig, dataset: Dataset, name: str, cache: Path | None) -> Outputs:
    """Train a tagger on the train split; its clip-level logits and embeddings on every split.

    With `cache`, outputs are stored as `{cache}/{name}-{hash}.npz` and reused; the hash covers the data,
    model and train config and the source of the modules that train and score.
    """
    fingerprint = config.model_dump_json(exclude={"thresholds"}) + "".join(map(inspect.getsource, TRAINING_CODE))
    key = hashlib.sha1(fingerprint.encode()).hexdigest()[:12]
    path = None if cache is None else cache / f"{name}-{key}.npz"
    if path is not None and path.is_file():
        log(f"  {name}: reusing the trained model's outputs in {path}")
        with np.load(path) as stored:
            return {s: (stored[f"{s}_logits"], stored[f"{s}_embeddings"]) for s in SPLITS}
    log(f"  {name}: training ({config.train.epochs} epochs)")
    trained = train_and_score(config, dataset, ModelSpec(name), embeddings=True)
    outputs = {s: (trained[s], trained[f"{s}_embedding"]) for s in SPLITS}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{kind}": outputs[s][i] for s in SPLITS for i, kind in enumerate(("logits", "embeddings"))}
        np.savez(path, **arrays)
    return outputs


def evaluate_rules(dataset: Dataset, bce: Outputs, sigmoid_f1: Outputs, settings: ThresholdConfig) -> dict:
    """{rule: {macro_f1, micro_f1}} on the test split."""
    targets = {"train": dataset.train.targets, "val": dataset.val.targets}
    test_logits, test_embeddings = bce["test"]
    val_logits = bce["val"][0]
    results = {}

    def score(rule: str, present: np.ndarray) -> None:
        micro, macro = f1_scores(dataset.test.targets, present)
        results[rule] = {"macro_f1": macro, "micro_f1": micro}

    score("fixed 0.5", fixed(test_logits))
    score("per-class tuned (val)", per_class(test_logits, fit_per_class(val_logits, targets["val"])))
    score("prior shift (val)", prior_shift(test_logits, fit_prior_shift(val_logits, targets["val"])))
    score("sigmoidF1 @ 0.5", fixed(sigmoid_f1["test"][0]))
    bank = MemoryBank.build(bce["train"][1], targets["train"], settings.bank_size, settings.bank_seed)
    train_idf = idf(targets["train"])
    own = np.arange(len(dataset.train))
    fits = [("val", None), ("train", None), ("train, flag mask", teacher_student_mask(dataset, bce["train"][0]))]
    for fit_name, mask in fits:
        split = fit_name.split(",")[0]
        for variant, lam in (("IDF", 1.0), ("KNN", 0.0), ("fused", settings.lam)):
            if mask is not None and variant != "fused":
                continue
            variant_settings = settings.model_copy(update={"lam": lam})
            logits, embeddings = bce[split]
            exclude = own if split == "train" else None
            module = fit_thresholds(
                logits, embeddings, targets[split], bank, train_idf, variant_settings, exclude=exclude, mask=mask
            )
            theta = thresholds_for(module, bank, test_embeddings)
            score(f"adaptive {variant} ({fit_name})", adaptive(test_logits, theta))
    return results


def teacher_student_mask(dataset: Dataset, train_logits: np.ndarray) -> np.ndarray:
    """1 − flags [N_train, C]: the BCE tagger, as its own in-sample teacher, flags the implicit negatives it
    scores highest (top `FlaggingConfig().percent` % per class, `raymlc.teacher_student`)."""
    flags = top_percent_flags(train_logits, dataset.train, FlaggingConfig().percent)
    return loss_mask(flags, len(dataset.train))


def run_dataset(name: str, config: TaggerConfig, cache: Path | None) -> dict:
    started = time.perf_counter()
    dataset = load_dataset(config)
    log(
        f"{name}: {len(dataset.train)}/{len(dataset.val)}/{len(dataset.test)} clips, "
        f"{len(dataset.vocabulary)} labels, model {config.model.kind}, {config.train.epochs} epochs"
    )
    bce = train_outputs(config, dataset, f"{name}-bce", cache)
    sigmoid_config = config.model_copy(update={"train": config.train.model_copy(update={"loss": "sigmoid_f1"})})
    sigmoid_f1 = train_outputs(sigmoid_config, dataset, f"{name}-sigmoid_f1", cache)
    rules = evaluate_rules(dataset, bce, sigmoid_f1, config.thresholds)
    seconds = time.perf_counter() - started
    log(f"{name}: done in {seconds:.0f} s")
    return {
        "rules": rules,
        "seconds": seconds,
        "clips": [len(dataset.train), len(dataset.val), len(dataset.test)],
    }


def table(results: dict[str, dict]) -> str:
    """Rules x datasets, cells `macro / micro` F1; the best macro-F1 of each dataset marked *."""
    names = list(results)
    rules = list(next(iter(results.values()))["rules"])
    width = max(len(rule) for rule in rules)
    lines = [f"{'test F1 (macro / micro)':<{width}}  " + "  ".join(f"{n:>17}" for n in names)]
    for rule in rules:
        cells = []
        for name in names:
            scores = results[name]["rules"]
            best = max(s["macro_f1"] for s in scores.values())
            mark = "*" if scores[rule]["macro_f1"] == best else " "
            cells.append(f"{scores[rule]['macro_f1']:.3f}{mark}/ {scores[rule]['micro_f1']:.3f}".rjust(17))
        lines.append(f"{rule:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    all_datasets = ["demo-observed", "demo-clean", "emotions", "birds", "fsdd-mix-observed"]
    parser.add_argument("--datasets", nargs="+", default=all_datasets, choices=all_datasets)
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench" / "results" / "data")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "thresholds.json")
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO / "bench" / "results" / "cache",
        help="reuse trained models' outputs stored here (same data/model/train config)",
    )
    parser.add_argument("--no-cache", action="store_true", help="train every model (neither read nor write)")
    args = parser.parse_args()
    started = time.perf_counter()
    configs = benchmark_configs(args.data_dir, args.datasets)
    cache = None if args.no_cache else args.cache
    results = {name: run_dataset(name, config, cache) for name, config in configs.items()}
    print(table(results))
    payload = {
        "results": results,
        "threshold_config": ThresholdConfig().model_dump(),
        "teacher_student_mask": "train, flag mask rows: top FlaggingConfig().percent % implicit negatives per class",
        "seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {args.output} ({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
