"""What the generated datasets (the demo, the FSDD mixtures) and the benchmarks' label removal share: rendering
every clip of every split in threads, calibrated label removal, explicit negatives and the written manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import expit

from raymlc.data.schema import normalize_manifest

SPLITS = ("train", "val", "test")
EXPLICIT_NEGATIVES = 2  # classes verified absent in a clip that has explicit negatives
LABEL_STREAM = 1_000_003  # seed-sequence key of the label-removal stream, apart from the per-clip streams

Clip = TypeVar("Clip")


class Labelled(Protocol):
    label: str


def render_splits(
    output_dir: Path,
    sizes: Sequence[int],
    audio_format: str,
    render: Callable[[int, int, Path], Clip],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[Path]], dict[str, list[Clip]]]:
    """Write `audio/{split}/{split}_{index:05d}.{audio_format}` for `sizes` clips of train, val and test with
    `render(split_index, index, path)`; return each split's paths and render results, in order.

    NumPy and libsndfile release the GIL, so threads render clips in parallel.
    """
    paths = {
        split: [output_dir / "audio" / split / f"{split}_{i:05d}.{audio_format}" for i in range(size)]
        for split, size in zip(SPLITS, sizes, strict=True)
    }
    for split in SPLITS:
        (output_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(s, i, path) for s, split in enumerate(SPLITS) for i, path in enumerate(paths[split])]
    clips: dict[str, list[Clip]] = {split: [] for split in SPLITS}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda job: render(*job), jobs)
        for done, ((split_index, _, _), clip) in enumerate(zip(jobs, results, strict=True), start=1):
            clips[SPLITS[split_index]].append(clip)
            if progress and (done % 100 == 0 or done == len(jobs)):
                progress(done, len(jobs))
    return paths, clips


def write_dataset(output_dir: Path, rows: list[dict], classes: Sequence[str]) -> Path:
    """Write `manifest.parquet` (normalized) and `classes.json` under `output_dir`; return the manifest's path."""
    manifest = output_dir / "manifest.parquet"
    pq.write_table(normalize_manifest(pa.Table.from_pylist(rows), source=str(manifest)), manifest)
    (output_dir / "classes.json").write_text(json.dumps(list(classes), indent=2) + "\n")
    return manifest


def overlaps(onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Fraction of each event's duration shared with the other events (capped at 1)."""
    ends = onsets + durations
    shared = np.clip(np.minimum(ends[:, None], ends) - np.maximum(onsets[:, None], onsets), 0, None)
    np.fill_diagonal(shared, 0)
    return np.minimum(shared.sum(axis=1) / durations, 1.0)


def calibrated_probabilities(scores: np.ndarray, fraction: float) -> np.ndarray:
    """sigmoid(scores - b), with b bisected so the probabilities average to `fraction`."""
    if fraction <= 0 or scores.size == 0:
        return np.zeros_like(scores)
    low, high = scores.min() - 50, scores.max() + 50
    for _ in range(100):
        offset = (low + high) / 2
        low, high = (offset, high) if expit(scores - offset).mean() > fraction else (low, offset)
    return expit(scores - (low + high) / 2)


def systematic_sample(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask with P(mask[i]) = probabilities[i] and exactly floor or ceil of their sum selected."""
    order = rng.permutation(len(probabilities))
    crossings = np.maximum(np.ceil(np.cumsum(probabilities[order]) - rng.uniform()), 0)
    mask = np.zeros(len(probabilities), dtype=bool)
    mask[order] = np.diff(crossings, prepend=0) > 0
    return mask


def removed_labels(
    clips: Sequence[Sequence[Labelled]], scores: np.ndarray, fraction: float, rng: np.random.Generator
) -> list[set[str]]:
    """Per clip, the labels removed: each event (in clip order, `scores` flattened the same way) is dropped
    with probability sigmoid(score - b), averaging `fraction`; that many are dropped, to within one."""
    dropped = iter(systematic_sample(calibrated_probabilities(scores, fraction), rng))
    return [{event.label for event in events if next(dropped)} for events in clips]


def explicit_negatives(present: set[str], classes: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
    """With probability `rate`, classes verified absent: drawn among the clip's true negatives."""
    if rng.uniform() >= rate:
        return []
    absent = [name for name in classes if name not in present]
    chosen = rng.choice(len(absent), min(EXPLICIT_NEGATIVES, len(absent)), replace=False)
    return [absent[i] for i in sorted(chosen)]


def remove_positives(targets: np.ndarray, removal: str, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool [N, C]: the positives of `targets` to remove, `fraction` of them (to within one): uniformly
    (`random`), or `structured`, with drop odds growing as the square of the clip's number of labels (busy
    clips lose labels more often, as in AudioSet's nomination failures)."""
    rows, columns = np.nonzero(targets)
    scores = np.zeros(len(rows)) if removal == "random" else 2 * np.log(targets.sum(axis=1)[rows])
    dropped = systematic_sample(calibrated_probabilities(scores, fraction), rng)
    removed = np.zeros(targets.shape, dtype=bool)
    removed[rows[dropped], columns[dropped]] = True
    return removed
