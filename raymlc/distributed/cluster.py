"""Connecting to Ray: the cluster named by an address or RAY_ADDRESS, else a new local one in-process."""

from __future__ import annotations

import logging
import os

import ray
import ray.data

# Small Train runs finish much sooner when worker health is polled often.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or RAY_ADDRESS), or start a local Ray in this process; no-op when connected."""
    if ray.is_initialized():
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-operator progress lines drown ours
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # address="local": always a fresh in-process cluster, never a stray one found on this machine.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
