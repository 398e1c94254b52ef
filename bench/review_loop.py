"""Closing the loop on the demo: a simulated reviewer answers a pipeline run's review queue, the review is applied
and the teacher–student run is repeated on the reviewed manifest.

Per seed (the demo generated with that seed: structured removal r = 0.3, configs/demo.yaml's model):

1. run A — `raymlc.teacher_student.run_teacher_student` on the demo as generated (teacher; student masking the
   teacher's top `--percent` % implicit negatives per class);
2. the queue — the `--top` best-scored flags of each class (`reviewing.queue_from_flags`, the pipeline's
   `flag_top.parquet`); the reviewer answers each item from `removed_labels` (present iff the generator removed
   that label) through `reviewing.DecisionLog`, as the review page does;
3. `reviewing.write_reviewed_manifest`: accepted labels join `labels`, rejected ones `explicit_negatives`;
4. run B — the same run on the reviewed manifest.

Reported: teacher and student test mAP before and after (the test split is complete and untouched), how many
of run A's flags the new explicit negatives take out of the candidates (run A's teacher scores flagged again on
the reviewed labels), and the flag precision of both runs against the removed labels.

    .venv/bin/python bench/review_loop.py --seeds 0 1 2 --top 10 --percent 3    # bench/results/review_loop.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymlc.config import DemoConfig, PipelineConfig, load_config
from raymlc.data.dataset import load_dataset, load_manifest_table
from raymlc.data.demo import make_demo
from raymlc.flagging import flag_mask_for
from raymlc.reviewing import Decision, DecisionLog, queue_from_flags, write_reviewed_manifest
from raymlc.teacher_student import flag_report, model_metrics, run_teacher_student, top_percent_flags

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "review_loop"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def seed_config(seed: int, manifest: Path) -> PipelineConfig:
    config = load_config(REPO / "configs" / "demo.yaml")
    config.data.manifest, config.train.seed = str(manifest), seed
    return config


def run_seed(seed: int, top: int, percent: float) -> dict:
    torch.set_num_threads(1)
    root = RESULTS / f"seed{seed}"
    manifest = root / "data" / "manifest.parquet"
    if not manifest.is_file():
        make_demo(manifest.parent, DemoConfig(seed=seed))
    config = seed_config(seed, manifest)
    before = load_dataset(config)
    started = time.perf_counter()
    run_a = run_teacher_student(config, before, [percent], references=False)
    log(f"seed {seed}: run A trained in {time.perf_counter() - started:.0f} s")

    table = load_manifest_table(config)
    train_rows = table.filter(pc.equal(table["split"], "train"))
    queue = queue_from_flags(run_a.flags["student"], train_rows, before.vocabulary, top)
    pq.write_table(queue, root / "flag_top.parquet")  # `raymlc review --queue ROOT` serves it
    shutil.rmtree(root / "review", ignore_errors=True)  # a rerun reviews afresh
    decisions = DecisionLog(root / "review")
    for item in queue.to_pylist():
        verdict = "present" if item["removed"] else "absent"
        decisions.append(Decision.now(item["clip_id"], item["label"], verdict, "simulated"))
    reviewed = root / "reviewed.parquet"
    reviewed.unlink(missing_ok=True)
    review = write_reviewed_manifest(str(manifest), decisions.directory, reviewed)
    after = load_dataset(seed_config(seed, reviewed))
    started = time.perf_counter()
    run_b = run_teacher_student(seed_config(seed, reviewed), after, [percent], references=False)
    log(f"seed {seed}: run B trained in {time.perf_counter() - started:.0f} s")

    # Run A's teacher scores flagged again on the reviewed labels: the rejected entries can no longer be flagged.
    rows = np.arange(len(before.train))
    flags_a = flag_mask_for(rows, run_a.flags["student"])
    again = flag_mask_for(rows, top_percent_flags(run_a.teacher_scores, after.train, percent))
    return {
        "seed": seed,
        "queue": len(queue),
        "accepted": review["accepted"],
        "rejected": review["rejected"],
        "flags_taken_out_by_explicit_negatives": int((flags_a & (after.train.explicit_negatives > 0)).sum()),
        "flags_a_still_flagged_after_review": int((flags_a & again).sum()),
        "models": {
            f"{name} {run}": model_metrics(data, outputs[name])
            for run, data, outputs in (("before", before, run_a.outputs), ("after", after, run_b.outputs))
            for name in ("teacher", "student")
        },
        "flags": {"before": flag_report(before.train, run_a.flags["student"])}
        | {"after": flag_report(after.train, run_b.flags["student"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=10, help="queue items per class reviewed")
    parser.add_argument("--percent", type=float, default=3.0, help="discard % of both runs")
    parser.add_argument("--jobs", type=int, default=2, help="seeds run side by side, one torch thread each")
    args = parser.parse_args()
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_seed, args.seeds, [args.top] * len(args.seeds), [args.percent] * len(args.seeds)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"top": args.top, "percent": args.percent, "seeds": results, "wall_s": time.perf_counter() - started}
    (RESULTS.parent / "review_loop.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("| seed | reviewed (accepted / rejected) | flags taken out | teacher mAP before → after | "
          "student mAP before → after | flag precision before → after |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        m, f = r["models"], r["flags"]
        print(
            f"| {r['seed']} | {r['queue']} ({r['accepted']} / {r['rejected']}) | "
            f"{r['flags_taken_out_by_explicit_negatives']} | {m['teacher before']['map']:.3f} → "
            f"{m['teacher after']['map']:.3f} | {m['student before']['map']:.3f} → {m['student after']['map']:.3f} | "
            f"{f['before']['precision']:.2f} → {f['after']['precision']:.2f} |"
        )
    gains = [r["models"]["student after"]["map"] - r["models"]["student before"]["map"] for r in results]
    print(f"student gain from the review: mean {np.mean(gains):+.4f}, {sum(g > 0 for g in gains)}/{len(gains)} seeds")
    log(f"wrote {RESULTS.parent / 'review_loop.json'} ({payload['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
