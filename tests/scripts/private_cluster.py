"""A private multi-process Ray cluster on this machine, for the cluster tests' subprocesses.

Its own short temp dir (Ray's socket paths must stay under 108 characters), free ports, and its address
written where Ray's own look-ups find it: in that temp dir (the job server resolves the cluster for a job's
driver from `<temp dir>/ray_current_cluster`) and in RAY_ADDRESS (inherited by every Ray process it starts).
Without both, those look-ups take the newest cluster on the machine, which may be someone else's.
`Cluster` would also overwrite the machine-wide /tmp/ray/ray_current_cluster; it writes to our temp dir.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import ray
import ray._private.utils
from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def private_cluster(
    num_cpus: int, object_store_mb: int, worker_nodes: int = 0, dashboard_port: int | None = None
) -> Iterator[Cluster]:
    """A head (with the dashboard and job server when `dashboard_port` is given) plus `worker_nodes` nodes."""
    temp_dir = tempfile.mkdtemp(prefix="rmc-", dir="/tmp")
    gcs_port = free_port()
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    write_address = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda address, _=None: write_address(address, temp_dir)
    node_args = {
        "num_cpus": num_cpus,
        "object_store_memory": object_store_mb * 1024**2,
        "dashboard_agent_listen_port": None,  # a free port
        "temp_dir": temp_dir,
    }
    head_args = {
        "gcs_server_port": gcs_port,
        "include_dashboard": dashboard_port is not None,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port or free_port(),
    }
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=node_args | head_args)
        for _ in range(worker_nodes):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
