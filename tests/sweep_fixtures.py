"""A tiny sweep for tests (about a minute on 2 cores): `write_tiny_sweep(root)` writes a 1-second demo
and a sweep YAML for it, to run with `raymlc sweep --config` or `python jobs/sweep.py --config`."""

from __future__ import annotations

from pathlib import Path

import yaml

from raymlc.config import DemoConfig, SweepConfig
from raymlc.data.demo import make_demo


def tiny_sweep(manifest: Path, storage: Path, num_trials: int = 3, epochs: int = 2) -> SweepConfig:
    """Tiny CNN, 2 epochs per model, 2 seeds per trial, p = 0 and p = 5 % first, then TPE."""
    base = {
        "data": {"manifest": str(manifest)},
        "frontend": {"window_seconds": 1.0, "n_mels": 32},
        "model": {"channels": [8, 16], "embedding_dim": 16},
        "train": {"epochs": epochs, "batch_size": 16},
        "ray": {"num_workers": 1, "cpus_per_worker": 0.5, "storage_path": str(storage)},
        "scoring": {"batch_size": 16, "min_actors": 1, "max_actors": 1},
        "flagging": {"percent": 5.0},
    }
    return SweepConfig.model_validate(
        {
            "base": base,
            "space": {"discard_percent": {"low": 1.0, "high": 20.0, "log": True}, "loss": ["bce"]},
            "num_trials": num_trials,
            "seeds": 2,
            "objective": "map",
            "trusted_validation": True,
            "asha": {"grace_period": 1},
            "startup_trials": 2,
            "max_concurrent_trials": 2,
            "cpus_per_seed": 0.4,
        }
    )


def write_tiny_sweep(root: Path, num_trials: int = 3, epochs: int = 2) -> Path:
    """`root/demo/` (60 train clips of 1 s, complete val) and `root/sweep.yaml`; returns the YAML's path."""
    manifest = make_demo(root / "demo", DemoConfig(n_train=60, n_val=24, n_test=16, clip_seconds=1.0, seed=3))
    config = tiny_sweep(manifest, root / "ray", num_trials, epochs)
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return path
