"""End to end: `raymlc relabel` on a small demo with a corrupt clip, a killed run resumed, the input untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlc.config import DemoConfig, RelabelConfig, TaggerConfig
from raymlc.data.demo import make_demo
from raymlc.training import BUNDLE, train_local

pytestmark = pytest.mark.slow

CONFIG = RelabelConfig(rows_per_part=16, batch_size=16, min_actors=1, max_actors=2, review_per_class=5)
OUTPUT_FILES = ("summary.json", "rejects.parquet", "review_queue.parquet", "review_queue.csv", "_parts.json")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small CNN tagger trained on a 1-second demo (seed 0)."""
    root = tmp_path_factory.mktemp("relabel-model")
    manifest = make_demo(root / "demo", DemoConfig(n_train=300, n_val=60, n_test=40, clip_seconds=1.0, seed=0))
    config = TaggerConfig.model_validate(
        {
            "data": {"manifest": str(manifest)},
            "frontend": {"window_seconds": 1.0, "n_mels": 32, "n_fft": 256, "win_length": 256, "hop_length": 128},
            "model": {"channels": [8, 16, 32], "embedding_dim": 32},
            "train": {"epochs": 10, "batch_size": 16, "lr": 0.003},
            "thresholds": {"epochs": 100},
        }
    )
    train_local(config, root / "run", log=lambda _: None)
    return str(root / "run" / BUNDLE)


@pytest.fixture(scope="module")
def relabel_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another demo (seed 1) to relabel, with one corrupt clip appended to its manifest."""
    root = tmp_path_factory.mktemp("relabel-input")
    manifest = make_demo(root, DemoConfig(n_train=120, n_val=12, n_test=12, clip_seconds=1.0, seed=1))
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    table = pq.read_table(manifest)
    row = table.slice(0, 1).to_pylist()[0] | {"clip_id": "corrupt-clip", "audio": str(corrupt)}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), manifest)
    return manifest


@pytest.fixture(scope="module")
def uninterrupted(ray_session, bundle: str, relabel_input: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run; the input folder is byte-identical before and after it."""
    from raymlc.distributed.relabeling import relabel_manifest

    before = tree_digest(relabel_input.parent)
    output = tmp_path_factory.mktemp("relabel-runs") / "uninterrupted"
    relabel_manifest(bundle, str(relabel_input), str(output), CONFIG, log=print)
    assert tree_digest(relabel_input.parent) == before
    return output


def read_output(output: Path) -> pa.Table:
    return pq.read_table(output / "manifest").sort_by("row_index")


@pytest.mark.timeout(1800)  # includes training the fixture model: ~2 min idle, 10+ min at load 40 on 2 cores
def test_relabel_output_is_complete_and_proposes_the_removed_labels(relabel_input: Path, uninterrupted: Path) -> None:
    manifest = pq.read_table(relabel_input)
    enhanced = read_output(uninterrupted)
    assert (uninterrupted / "_SUCCESS").exists()
    # Every input row exactly once, its original columns untouched.
    assert enhanced["row_index"].to_pylist() == list(range(len(manifest)))
    assert enhanced.select(manifest.column_names).equals(manifest)
    # Proposals are implicit negatives only.
    for row in enhanced.to_pylist():
        assert not set(row["proposed_labels"]) & set(row["labels"] + row["explicit_negatives"]), row["clip_id"]
        assert all(margin > 0 for margin in row["proposed_margins"])
        assert row["proposed_margins"] == sorted(row["proposed_margins"], reverse=True)

    # The unreadable clip lands in rejects with its reason, and in the manifest with no proposals.
    rejects = pq.read_table(uninterrupted / "rejects.parquet").to_pylist()
    assert [(r["clip_id"], r["row_index"]) for r in rejects] == [("corrupt-clip", len(manifest) - 1)]
    assert rejects[0]["reason"] and rejects[0]["audio"].endswith("corrupt.wav")
    assert enhanced.slice(len(manifest) - 1).to_pylist()[0]["proposed_labels"] == []

    # Proposals vs the labels the demo generator removed (complete labels on val/test: any proposal is wrong).
    summary = json.loads((uninterrupted / "summary.json").read_text())
    total = summary["total"]
    assert (total["clips"], total["clips_scanned"], total["rejected"]) == (len(manifest), len(manifest) - 1, 1)
    assert summary["rejects"][0]["clip_id"] == "corrupt-clip"
    # This small, fast model is weak (test mAP ~0.5), so the bound is on enrichment: a proposal is at least
    # 3x as likely to be a removed label as an implicit negative picked at random (README: the demo CNN).
    implicit = sum(row["implicit_negatives"] for row in summary["per_class"].values())
    base_rate = total["removed_labels"] / implicit
    print(
        f"relabel demo: {total['proposals']} proposals, precision {total['precision']:.2f}, "
        f"recall {total['recall']:.2f} against the removed labels (base rate {base_rate:.3f})"
    )
    assert total["precision"] > 3 * base_rate
    assert total["proposals_in_removed"] >= 3

    # Review queue: per class the 5 proposals with the largest margins, ranked, with audio path and segment.
    queue = pq.read_table(uninterrupted / "review_queue.parquet").to_pylist()
    assert queue and {"audio", "start_s", "end_s", "score", "margin"} <= set(queue[0])
    margins: dict[str, list[float]] = {}
    for row in enhanced.to_pylist():
        for name, margin in zip(row["proposed_labels"], row["proposed_margins"], strict=True):
            margins.setdefault(name, []).append(margin)
    assert {entry["label"] for entry in queue} == set(margins)
    for label, values in margins.items():
        entries = [entry for entry in queue if entry["label"] == label]
        assert [e["rank"] for e in entries] == list(range(1, min(5, len(values)) + 1))
        assert [e["margin"] for e in entries] == sorted(values, reverse=True)[:5]

    # The commit record: every part with its checksum.
    parts = json.loads((uninterrupted / "_parts.json").read_text())
    assert [p["rows"] for p in parts["parts"]][-1][1] == len(manifest)
    for part in parts["parts"]:
        assert hashlib.sha256((uninterrupted / part["file"]).read_bytes()).hexdigest() == part["sha256"]


def descendants(pid: int) -> list[int]:
    """Processes below `pid` (from /proc), to find this test's own Ray workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tagger_actor_once(output: Path, stop: threading.Event, killed: list[dict]) -> None:
    """SIGKILL the first relabel actor process that appears below this process; record when."""
    while not stop.is_set():
        for pid in descendants(os.getpid()):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ProposalTagger" in title:
                parts = len(list((output / "manifest").glob("part-*.parquet")))
                os.kill(pid, signal.SIGKILL)
                killed.append({"pid": pid, "parts_committed": parts, "done": (output / "_SUCCESS").exists()})
                return
        time.sleep(0.2)


@pytest.mark.timeout(1800)  # two Ray starts and two runs: ~1 min idle, 10+ min at load 40
def test_killed_run_resumes_to_the_same_output(
    bundle: str, relabel_input: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    from raymlc.distributed.relabeling import relabel_manifest

    before = tree_digest(relabel_input.parent)
    output = tmp_path / "resumed"
    config_file = tmp_path / "relabel.yaml"
    config_file.write_text(json.dumps(CONFIG.model_dump()))  # JSON is YAML
    command = [sys.executable, "-m", "raymlc.cli", "relabel", "--bundle", bundle, "--input", str(relabel_input)]
    command += ["--output", str(output), "--config", str(config_file)]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    # 1. A driver killed (with its whole local Ray) after it committed two of the ten parts.
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(list((output / "manifest").glob("part-*.parquet"))) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    committed = sorted(path.name for path in (output / "manifest").glob("part-*.parquet"))
    assert 2 <= len(committed) < 10 and not (output / "_SUCCESS").exists()

    # 2. The rerun keeps those parts, and survives its tagger actor being killed mid-way.
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_tagger_actor_once, args=(output, stop, killed), daemon=True)
    killer.start()
    lines: list[str] = []
    try:
        relabel_manifest(bundle, str(relabel_input), str(output), CONFIG, log=lines.append)
    finally:
        stop.set()
        killer.join()
    assert any(f"{len(committed)} already committed" in line for line in lines), lines
    assert killed and not killed[0]["done"], killed

    # Identical to the uninterrupted run: the same parts byte for byte, the same queue, rejects and summary.
    assert tree_digest(output / "manifest") == tree_digest(uninterrupted / "manifest")
    for name in OUTPUT_FILES:
        assert (output / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    enhanced = read_output(output)
    assert len(set(enhanced["clip_id"].to_pylist())) == len(enhanced) == len(pq.read_table(relabel_input))
    assert tree_digest(relabel_input.parent) == before

    # A third run finds the work done; a run with other settings into the same folder is refused.
    again: list[str] = []
    relabel_manifest(bundle, str(relabel_input), str(output), CONFIG, log=again.append)
    assert any("already complete" in line for line in again)
    from raymlc.distributed.relabeling import RelabelError

    with pytest.raises(RelabelError, match="different min_margin"):
        relabel_manifest(bundle, str(relabel_input), str(output), CONFIG.model_copy(update={"min_margin": 1.0}))


def test_relabel_refuses_a_folder_that_is_not_its_own(bundle: str, relabel_input: Path, tmp_path: Path) -> None:
    from raymlc.distributed.relabeling import RelabelError, relabel_manifest

    (tmp_path / "notes.txt").write_text("someone else's file")
    with pytest.raises(RelabelError, match="not a relabel run"):
        relabel_manifest(bundle, str(relabel_input), str(tmp_path), CONFIG)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
