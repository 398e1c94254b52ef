"""Past RAM: 2 Ray Train workers stream a manifest whose decoded waveforms would need twice this machine's memory.

    .venv/bin/python bench/past_ram.py [--clips 84000] [--files 200] [--steps 2000]

Writes `--files` distinct 10-s FLAC clips (16 kHz; a tone, a noise burst or both) and a manifest of `--clips`
train rows that list them repeatedly under distinct clip ids (84,000 × 10 s × 16 kHz × 4 B = 50 GiB
decoded), plus 100 val rows. Trains a small CNN (1-s random crops, global batch 16) with 2 DDP workers for
`--steps` optimizer steps (2 epochs of `steps / 2`), every clip probed first. A sampler reads /proc every 2 s:
the RSS of every process of the run (driver, Train workers, reader actors, Ray's own) and Ray's
object-store use. Prints the peak RSS of each process kind, first-to-last RSS of the Train workers, object
store peak, samples/s; writes bench/results/past_ram.json. Goal: each process <= 3 GiB and flat.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from raymlc.config import PipelineConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import load_manifest_table

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
SR, SECONDS = 16000, 10.0
LABELS = ("tone", "noise")


def write_clips(folder: Path, n_files: int, rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """`n_files` 10-s clips: each holds a 440-1760 Hz tone, a noise burst, or both."""
    t = np.arange(int(SR * SECONDS)) / SR
    clips = []
    for i in range(n_files):
        labels = [LABELS[i % 2]] if i % 3 else list(LABELS)
        wave = 0.01 * rng.standard_normal(len(t))
        if "tone" in labels:
            wave += 0.3 * np.sin(2 * np.pi * rng.uniform(440, 1760) * t)
        if "noise" in labels:
            wave += rng.uniform(-0.3, 0.3, len(t)) * (np.sin(2 * np.pi * 0.5 * t) > 0)
        path = folder / f"clip{i:04d}.flac"
        sf.write(path, wave.astype(np.float32), SR)
        clips.append((path.name, labels))
    return clips


def process_kind(pid: int, driver: int) -> str | None:
    """What a process of this run is, from its command line; None for processes outside the run."""
    if pid == driver:
        return "driver"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for marker, kind in (
        ("RayTrainWorker", "train worker"),
        ("SlotReader", "reader"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
        ("ray::", "other ray worker"),
        ("default_worker.py", "other ray worker"),
    ):
        if marker in cmdline:
            return kind
    return None


def rss_mib(pid: int) -> float | None:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(match[1]) / 1024 if match else None


class Sampler(threading.Thread):
    """Every `interval` s: RSS (MiB) of every process of the run, by pid, and Ray's object-store use."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.rss: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.kinds: dict[int, str] = {}
        self.store: list[tuple[float, float]] = []
        self.started = time.monotonic()

    def run(self) -> None:
        import ray
        from ray._private.internal_api import memory_summary

        driver = os.getpid()
        while not self.stop.wait(self.interval):
            now = time.monotonic() - self.started
            for entry in os.listdir("/proc"):
                kind = process_kind(int(entry), driver) if entry.isdigit() else None
                if kind and (rss := rss_mib(int(entry))) is not None:
                    self.kinds[int(entry)] = kind
                    self.rss[int(entry)].append((now, rss))
            if ray.is_initialized():
                match = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
                self.store.append((now, float(match[1]) if match else float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=84000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    from raymlc.distributed.training import readable_splits, train_distributed

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work, "clips")
        folder.mkdir()
        clips = write_clips(folder, args.files, rng)
        rows = [
            {
                "clip_id": f"{split}{i:06d}",
                "audio": f"clips/{clips[i % len(clips)][0]}",
                "labels": clips[i % len(clips)][1],
                "split": split,
            }
            for split, n in (("train", args.clips), ("val", 100))
            for i in range(n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), Path(work, "manifest.parquet"))
        decoded_gib = args.clips * SECONDS * SR * 4 / 2**30
        print(f"manifest: {args.clips} train clips of 10 s ({decoded_gib:.1f} GiB decoded), {args.files} files")
        config = PipelineConfig.model_validate(
            {
                "data": {"manifest": str(Path(work, "manifest.parquet"))},
                "frontend": {"window_seconds": 1.0, "n_mels": 32},
                "model": {"channels": [8, 16, 32], "embedding_dim": 32},
                "train": {"epochs": 2, "steps_per_epoch": args.steps // 2, "batch_size": 16, "eval_batch_size": 16},
                "ray": {
                    "num_workers": 2,
                    "cpus_per_worker": 0.5,
                    "readers_per_worker": 2,
                    "storage_path": str(Path(work, "ray")),
                    "max_failures": 0,
                },
            }
        )
        sampler = Sampler()
        sampler.start()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        splits, rejects = readable_splits(load_manifest_table(config), config)
        probed = time.perf_counter() - started
        result = train_distributed(config, "past-ram", LabelVocabulary(list(LABELS)), splits)
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        ray.shutdown()

    steps = config.train.epochs * config.train.steps_per_epoch
    train_seconds = sum(record["train_seconds"] for record in result.history)
    by_kind: dict[str, float] = defaultdict(float)
    for pid, series in sampler.rss.items():
        by_kind[sampler.kinds[pid]] = max(by_kind[sampler.kinds[pid]], max(rss for _, rss in series))
    workers = {pid: series for pid, series in sampler.rss.items() if sampler.kinds[pid] == "train worker"}
    flat = {
        str(pid): (series[len(series) // 2][1], series[-1][1]) for pid, series in workers.items() if len(series) > 4
    }
    print(
        f"probe: {len(rejects)} rejects in {probed:.0f} s; {steps} steps in {train_seconds:.0f} s of training "
        f"({steps * 16 / train_seconds:.1f} samples/s), {wall:.0f} s in all"
    )
    print("peak RSS by process kind (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items())))
    print(
        "train workers, RSS halfway -> at the end (MiB): " + ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in flat.values())
    )
    store_peak = max((used for _, used in sampler.store), default=float("nan"))
    print(f"object store peak: {store_peak:.0f} MiB; final val mAP {result.history[-1]['val_map']:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "clips": args.clips,
        "decoded_gib": decoded_gib,
        "steps": steps,
        "train_seconds": train_seconds,
        "samples_per_s": steps * 16 / train_seconds,
        "wall_s": wall,
        "probe_s": probed,
        "peak_rss_mib": by_kind,
        "train_worker_rss_half_to_end_mib": flat,
        "object_store_peak_mib": store_peak,
        "rss_series": {f"{sampler.kinds[pid]} {pid}": series for pid, series in sampler.rss.items()},
        "object_store_series": sampler.store,
        "history": result.history,
    }
    (RESULTS / "past_ram.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
