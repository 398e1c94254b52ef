"""Shared fixtures: paths to the read-only real data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or a skip when this clone has no such folder (real-data tests)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (real-data test)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def train_pid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where Train workers write `{run name}-rank{N}.pid` (set before Ray starts, so workers inherit it)."""
    return tmp_path_factory.mktemp("train-pids")


@pytest.fixture(scope="session")
def train_trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where Train workers save `{run name}-rank{N}-epoch{E}.npy`: the train rows of each batch they trained on."""
    return tmp_path_factory.mktemp("train-traces")


@pytest.fixture(scope="session")
def ray_session(train_pid_dir: Path, train_trace_dir: Path):
    """One local Ray for the whole test session (2 CPUs, small object store, no dashboard)."""
    import os

    os.environ["RAYMLC_TRAIN_PID_DIR"] = str(train_pid_dir)
    os.environ["RAYMLC_TRAIN_TRACE_DIR"] = str(train_trace_dir)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=150 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
