"""Cluster surfaces: the launcher configs against Ray's own schema, a two-node Train run, `ray job submit`.

The Ray tests start their own clusters in subprocesses (private temp dirs, free ports) and never touch the
session's in-process Ray; each subprocess shuts its cluster down, and is killed with its group on timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from sweep_fixtures import write_tiny_sweep

from raymlc.config import DemoConfig, load_config
from raymlc.data.demo import make_demo

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
VENV_BIN = Path(sys.executable).parent
# Ray gives a new node 30 s (hard-coded) to register with its GCS; on this shared 2-core machine under heavy
# load a start can miss that. Such a start is retried; every other failure fails the test.
STARTUP_TIMEOUT = "timed out during startup"
STARTS = 3


def load_launcher_config(name: str) -> dict:
    """A cluster YAML after the launcher's own preparation (`ray up` does the same before validating)."""
    return prepare_config(yaml.safe_load((REPO / name).read_text()))


def test_cloud_cluster_config_is_valid_for_the_launcher() -> None:
    config = load_launcher_config("cluster.yaml")
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0
    gpu = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) > 0]
    cpu = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) == 0]
    assert gpu and cpu
    assert all(0 <= spec["min_workers"] <= spec["max_workers"] for spec in workers.values())
    # Every node type pip-installs this checkout (~/raymlc) with the Ray extra under the pinned constraints,
    # after its torch.
    node_commands = [config["head_setup_commands"]]
    node_commands += [spec.get("worker_setup_commands", config["worker_setup_commands"]) for spec in workers.values()]
    checkout = re.compile(r'-e "?(~|\$HOME)/raymlc\[ray\]"?$')
    for commands in node_commands:
        torch_step = next(i for i, c in enumerate(commands) if "pip install" in c and "torch==" in c)
        raymlc_step = next(i for i, c in enumerate(commands) if "pip install" in c and checkout.search(c))
        assert torch_step < raymlc_step and "constraints" in commands[raymlc_step]
    assert "torch==2.11.0 torchaudio==2.11.0" in "\n".join(gpu[0]["worker_setup_commands"])
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in "\n".join(config["setup_commands"])


def test_onprem_cluster_config_is_valid_for_the_launcher() -> None:
    raw = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    config = load_launcher_config("cluster-onprem.yaml")
    validate_config(config)
    worker = config["available_node_types"]["local.cluster.node"]
    assert worker["max_workers"] == len(raw["provider"]["worker_ips"])


def test_launcher_schema_rejects_an_unknown_key() -> None:
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    raw["available_node_types"][raw["head_node_type"]]["instance_count"] = 3
    with pytest.raises(jsonschema.ValidationError, match="instance_count"):
        validate_config(prepare_config(raw))


def test_pipeline_job_has_help_and_names_a_bad_config(tmp_path: Path) -> None:
    job = [sys.executable, str(REPO / "jobs" / "pipeline.py")]
    shown = subprocess.run([*job, "--help"], capture_output=True, text=True, check=True)
    assert "--config" in shown.stdout and "--output" in shown.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {manifest: m.parquet}\nray: {num_workerz: 2}\n")
    failed = subprocess.run(
        [*job, "--config", str(bad), "--output", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert str(bad) in failed.stderr and "num_workerz" in failed.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_env(**extra: str) -> dict[str, str]:
    """This venv first on PATH (so jobs run its python), no RAY_ADDRESS, token auth off for local clusters."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def run_script(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run in a new process group; on timeout kill that group (our processes only) and fail."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[1]} timed out after {timeout} s:\n{stdout[-6000:]}\n{stderr[-2000:]}")
    finally:
        if process.poll() is None:  # interrupted (pytest-timeout, Ctrl-C): leave none of its processes behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    return make_demo(root, DemoConfig(n_train=60, n_val=20, n_test=20, clip_seconds=1.0))


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2 min at load 10 on this shared 2-core machine, 3 min at load 40
def test_training_workers_span_two_nodes_with_shared_storage(tiny_demo: Path, tmp_path: Path) -> None:
    pids, nodes, storage = tmp_path / "pids", tmp_path / "nodes", tmp_path / "storage"
    pids.mkdir()
    nodes.mkdir()
    command = [
        sys.executable,
        str(SCRIPTS / "two_node_train.py"),
        "--manifest",
        str(tiny_demo),
        "--storage",
        str(storage),
        "--node-dir",
        str(nodes),
    ]
    for _ in range(STARTS):
        done = run_script(command, cluster_env(RAYMLC_TRAIN_PID_DIR=str(pids)), timeout=780)
        if STARTUP_TIMEOUT not in done.stderr:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert len(result["nodes"]) == 2
    worker_pids = [(pids / f"two-nodes-rank{rank}.pid").read_text() for rank in (0, 1)]
    worker_nodes = [(nodes / f"{pid}.node").read_text() for pid in worker_pids]
    assert sorted(worker_nodes) == result["nodes"]  # one Train worker on each node

    checkpoint = Path(result["checkpoint"])
    assert checkpoint.parent == storage / "two-nodes"
    assert (checkpoint / "checkpoint.pt").is_file() and (checkpoint / "train_state.pt").is_file()
    assert [record["epoch"] for record in result["history"]] == [1]


def start_job_head(log: Path) -> tuple[subprocess.Popen, dict]:
    """job_head.py in its own session, and the JSON line it prints once the head is up."""
    for _ in range(STARTS):
        command = [sys.executable, str(SCRIPTS / "job_head.py"), "--dashboard-port", str(free_port())]
        with log.open("w") as stderr:
            head = subprocess.Popen(
                command,
                env=cluster_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        if ready := json.loads(head.stdout.readline() or "{}"):
            return head, ready
        head.wait()
        if STARTUP_TIMEOUT not in log.read_text():
            break
    pytest.fail(f"head did not start:\n{log.read_text()[-3000:]}")


@pytest.fixture
def job_head(tmp_path: Path):
    """A private Ray head with the job server; yields its dashboard URL and stops it afterwards."""
    head, ready = start_job_head(tmp_path / "head.log")
    try:
        deadline = time.monotonic() + 120
        while True:  # the job server answers once the dashboard has started
            try:
                urllib.request.urlopen(f"{ready['dashboard']}/api/version", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield ready["dashboard"]
    finally:
        head.stdin.close()  # the head shuts its cluster down
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its session: the head script and the Ray processes it started
            head.wait()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 4.5 min at load 25 on this shared 2-core machine, 14 min at load 60-70
def test_sweep_job_submitted_with_ray_job_submit(job_head: str, tmp_path: Path) -> None:
    config = write_tiny_sweep(tmp_path, num_trials=2)
    output = tmp_path / "sweep"
    submit = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--address",
        job_head,
        "--submission-id",
        "raymlc-sweep-test",
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(REPO / "jobs" / "runtime_env.yaml"),
        "--",
        "python",
        "jobs/sweep.py",
        "--config",
        str(config),
        "--output",
        str(output),
    ]
    done = run_script(submit, cluster_env(), timeout=1600)
    (tmp_path / "submit.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"see {tmp_path / 'submit.log'}:\n{done.stdout[-3000:]}"
    assert "Job 'raymlc-sweep-test' succeeded" in done.stdout

    results = pq.read_table(output / "results.parquet").to_pylist()
    assert len(results) == 2 and {row["discard_percent"] for row in results} == {0.0, 5.0}
    assert {row["status"] for row in results} <= {"completed", "stopped early"}
    completed = [row["objective"] for row in results if row["status"] == "completed"]
    assert completed and all(0 <= objective <= 1 for objective in completed)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["best"]["objective"] == max(completed)
    assert load_config(output / "best_config.yaml").flagging.percent == summary["best"]["discard_percent"]
    assert (output / "best_bundle").is_dir() and (output / "results.csv").is_file()
    assert (tmp_path / "ray" / f"{output.name}-teacher").is_dir()  # Ray Train checkpoints in storage_path
