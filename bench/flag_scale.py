"""Flag implicit negatives of 1M clips x 527 classes, streamed in blocks; time it and record peak RSS.

Labels are synthetic with AudioSet-shaped per-class positive rates (balanced_train_segments.csv, each
class's rate applied to every clip; a Zipf-shaped prior when ../shared is absent). Teacher scores are
standard normals shifted up by 3 at positives. Every block is regenerated from (seed, block) on each pass,
so no N x C array ever exists. Blocks are dealt round-robin to `--workers` partial flaggers that are merged
at the end, as parallel workers would be; a few classes are checked against a brute-force top-k.

    .venv/bin/python bench/flag_scale.py            # writes bench/results/flag_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raymlc.data import LabelVocabulary, read_manifest
from raymlc.flagging import FlagResult, TopKFlagger, flag_budget, flag_mask_for, implicit_negative_counts

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO.parent / "shared" / "data" / "audioset_metadata"
AUDIOSET_CLASSES = 527
AUDIOSET_LABELS_PER_CLIP = 2.386  # mean of balanced_train_segments.csv


def class_rates(metadata: Path) -> tuple[np.ndarray, str]:
    """Per-class positive rate and where it came from."""
    segments = metadata / "balanced_train_segments.csv"
    if segments.is_file():
        table = read_manifest(str(segments), format="audioset")
        labels = LabelVocabulary.from_table(table).encode(table.column("labels").to_pylist())
        return labels.mean(axis=0, dtype=np.float64), f"audioset balanced_train ({table.num_rows} clips)"
    prior = 1.0 / np.arange(1, AUDIOSET_CLASSES + 1)
    return prior * AUDIOSET_LABELS_PER_CLIP / prior.sum(), "zipf prior (../shared absent)"


def block_bounds(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + block_rows, n_rows)) for lo in range(0, n_rows, block_rows)]


def block_labels(
    seed: int, block: int, n: int, rates: np.ndarray, explicit_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, explicit negatives) of one block, bool [n, C]."""
    rng = np.random.default_rng([seed, block, 0])
    positives = rng.random((n, len(rates)), dtype=np.float32) < rates.astype(np.float32)
    explicit = rng.random((n, len(rates)), dtype=np.float32) < explicit_rate
    explicit &= ~positives
    return positives, explicit


def block_scores(seed: int, block: int, positives: np.ndarray) -> np.ndarray:
    """Synthetic teacher logits [n, C] float32."""
    rng = np.random.default_rng([seed, block, 1])
    scores = rng.standard_normal(positives.shape, dtype=np.float32)
    scores += 3.0 * positives
    return scores


Block = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def blocks(args: argparse.Namespace, rates: np.ndarray) -> Iterator[Block]:
    """(block number, row index, positives, explicit negatives) per block."""
    for block, (lo, hi) in enumerate(block_bounds(args.rows, args.block_rows)):
        positives, explicit = block_labels(args.seed, block, hi - lo, rates, args.explicit_rate)
        yield block, np.arange(lo, hi), positives, explicit


def audit(result: FlagResult, classes: list[int], columns: dict[int, tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether the chosen classes' flags equal a brute-force sort of their full score column."""
    for c in classes:
        scores, implicit = columns[c]
        candidates = np.flatnonzero(implicit)
        order = np.lexsort((candidates, -scores[candidates].astype(np.float64)))
        if not np.array_equal(result.class_rows(c), candidates[order[: result.budget[c]]]):
            return False
    return True


class Stopwatch:
    """Accumulated wall and CPU seconds of the `with` blocks it times."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    def report(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2)}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(args: argparse.Namespace) -> dict:
    total, count_time, generate_time = Stopwatch(), Stopwatch(), Stopwatch()
    with total:
        rates, prior = class_rates(args.metadata)
        n_classes = len(rates)
        audited = [int(np.argmax(rates)), int(np.argsort(rates)[n_classes // 2]), int(np.argmin(rates))]
        with count_time:
            counts = sum(implicit_negative_counts(pos, exp) for _, _, pos, exp in blocks(args, rates))

        budgets = {p: flag_budget(counts, percent=p) for p in args.percents}
        partials = {p: [TopKFlagger(budgets[p]) for _ in range(args.workers)] for p in args.percents}
        update_time = {p: Stopwatch() for p in args.percents}
        columns = {c: (np.empty(args.rows, np.float32), np.empty(args.rows, bool)) for c in audited}
        for block, rows, positives, explicit in blocks(args, rates):
            with generate_time:
                scores = block_scores(args.seed, block, positives)
            for c in audited:
                columns[c][0][rows], columns[c][1][rows] = scores[:, c], ~positives[:, c] & ~explicit[:, c]
            for p in args.percents:
                with update_time[p]:
                    partials[p][block % args.workers].update(rows, scores, positives, explicit)
        del scores
        rss_after_updates = peak_rss_mib()
        report = {
            f"{p:g}%": flag_report(args, rates, partials.pop(p), update_time[p], audited, columns)
            for p in list(partials)
        }
    return {
        "rows": args.rows,
        "classes": n_classes,
        "block_rows": args.block_rows,
        "workers": args.workers,
        "prior": prior,
        "positives_per_clip": round(float(rates.sum()), 3),
        "explicit_rate": args.explicit_rate,
        "implicit_negatives": int(counts.sum()),
        "audited_classes": audited,
        "count_pass": count_time.report(),
        "score_generation": generate_time.report(),
        "percent": report,
        "total": total.report(),
        "peak_rss_after_updates_mib": rss_after_updates,
        "peak_rss_mib": peak_rss_mib(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def flag_report(
    args: argparse.Namespace,
    rates: np.ndarray,
    partials: list[TopKFlagger],
    update_time: Stopwatch,
    audited: list[int],
    columns: dict[int, tuple[np.ndarray, np.ndarray]],
) -> dict:
    """Merge the partial flaggers, rebuild every block's flag mask, and check the flags."""
    merge_time, mask_time = Stopwatch(), Stopwatch()
    with merge_time:
        merged = partials[0]
        for other in partials[1:]:
            merged.merge(other)
        del partials[1:]
        result = merged.result()
    flagged, overlap = 0, 0
    for _, rows, positives, explicit in blocks(args, rates):
        with mask_time:
            mask = flag_mask_for(rows, result)
        flagged += int(mask.sum())
        overlap += int((mask & (positives | explicit)).sum())
    return {
        "flags": int(result.counts.sum()),
        "budget": int(merged.budget.sum()),
        "budget_met": bool(np.array_equal(result.counts, merged.budget)),
        "mask_flags": flagged,
        "flags_on_labelled_entries": overlap,
        "audit_exact": audit(result, audited, columns),
        "update": update_time.report(),
        "merge_and_result": merge_time.report(),
        "flag_mask_for": mask_time.report(),
        "state_mib": round(result.counts.sum() * 16 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--block-rows", type=int, default=50_000)
    parser.add_argument("--percents", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--workers", type=int, default=4, help="partial flaggers merged at the end")
    parser.add_argument("--explicit-rate", type=float, default=0.01, help="synthetic explicit negatives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metadata", type=Path, default=METADATA)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "flag_scale.json")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
