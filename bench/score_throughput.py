"""Ray Data scoring vs a plain single-process PyTorch loop: clips/s on the same clips and cores.

    .venv/bin/python bench/score_throughput.py [--clips 600] [--repeat 1] [--cpus 2]

Both paths decode the same demo clips with soundfile and score them with the same CNN through
`raymlc.scoring.score_batch`; the plain loop uses `--cpus` torch threads, Ray gets `--cpus` CPUs
(a pool of `--cpus` single-threaded actors that decode and score). Checks that both paths give the same
scores, prints both rates and their ratio, and writes bench/results/score_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymlc.checkpoint import save_checkpoint
from raymlc.config import DemoConfig, ModelConfig, PipelineConfig, ScoringConfig
from raymlc.data import LabelVocabulary
from raymlc.data.audio import decode_clips
from raymlc.data.demo import make_demo
from raymlc.models import build_model
from raymlc.scoring import score_batch

RESULTS = Path(__file__).parent / "results"


def plain_loop(rows: list[dict], model: torch.nn.Module, window: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds to decode and score `rows` in one process, and the scores."""
    started = time.perf_counter()
    scores = []
    for start in range(0, len(rows), batch_size):
        waves, _, _ = decode_clips(rows[start : start + batch_size], sample_rate=16000)
        logits, _ = score_batch(model, waves, window)
        scores.append(torch.sigmoid(logits).numpy())
    return time.perf_counter() - started, np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=600, help="demo clips to score (default 600)")
    parser.add_argument("--cpus", type=int, default=2, help="cores for both paths (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeat", type=int, default=1, help="list every clip this many times (a longer job without more audio)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="raymlc-throughput-"))
    manifest = make_demo(workdir / "demo", DemoConfig(n_train=args.clips, n_val=1, n_test=1, seed=7))
    table = pq.read_table(manifest)
    table = table.filter(pc.equal(table["split"], "train"))
    ids = table["clip_id"]
    table = pa.concat_tables(
        table.set_column(0, "clip_id", pc.binary_join_element_wise(ids, str(copy), "#")) for copy in range(args.repeat)
    )
    vocabulary = LabelVocabulary.from_table(table)
    config = PipelineConfig.model_validate({"data": {"manifest": str(manifest)}})
    model = build_model(ModelConfig(), config.frontend, len(vocabulary)).eval()
    checkpoint = workdir / "checkpoint.pt"
    save_checkpoint(checkpoint, model, config, vocabulary, None)
    window = config.window_samples

    torch.set_num_threads(args.cpus)
    rows = table.select(["clip_id", "audio", "start_s", "end_s"]).to_pylist()
    plain_loop(rows[: args.batch_size], model, window, args.batch_size)  # warm-up
    plain_s, plain_scores = plain_loop(rows, model, window, args.batch_size)
    print(f"plain loop: {len(rows) / plain_s:.1f} clips/s ({plain_s:.1f} s, {args.cpus} torch threads)", flush=True)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from raymlc.distributed.scoring import score_manifest

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    scoring = ScoringConfig(batch_size=args.batch_size, min_actors=args.cpus, max_actors=args.cpus, cpus_per_actor=0.9)
    started = time.perf_counter()
    score_manifest(table.slice(0, args.batch_size), str(checkpoint), workdir / "warmup", scoring)
    one_batch_s = time.perf_counter() - started
    print(f"ray data, one batch of {args.batch_size} clips (mostly actor start-up): {one_batch_s:.1f} s", flush=True)
    started = time.perf_counter()
    score_manifest(table, str(checkpoint), workdir / "scores", scoring)
    ray_s = time.perf_counter() - started
    ray.shutdown()
    scored = pq.read_table(workdir / "scores", columns=["row_index", "scores"]).sort_by("row_index")
    assert scored["row_index"].to_pylist() == list(range(len(rows))), "ray data lost or repeated clips"
    np.testing.assert_allclose(np.stack(scored["scores"].to_numpy(zero_copy_only=False)), plain_scores, atol=1e-5)
    print(f"ray data:   {len(rows) / ray_s:.1f} clips/s ({ray_s:.1f} s, {args.cpus} CPUs)", flush=True)
    ratio = plain_s / ray_s
    print(f"ratio ray data / plain loop (clips/s): {ratio:.2f}")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "clips": len(rows),
        "cpus": args.cpus,
        "plain_clips_per_s": len(rows) / plain_s,
        "ray_data_clips_per_s": len(rows) / ray_s,
        "ratio": ratio,
        "ray_data_one_batch_s": one_batch_s,
    }
    (RESULTS / "score_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
