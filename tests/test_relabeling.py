"""Relabeling core (no Ray): proposals, the per-class summary, the review queue, part assembly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import expit

from raymlc.cli import build_parser
from raymlc.config import RelabelConfig
from raymlc.relabeling import PartAssembler, ProposalSummary, ReviewQueue, propose

NAMES = ("bird", "car", "dog")


def test_proposals_are_implicit_negatives_above_their_threshold() -> None:
    logits = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 0.2], [0.0, 0.0, 0.0]], np.float32)
    thresholds = np.array([[0.0, 0.5, -2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    labels = [["bird"], [], ["unknown-to-the-tagger"]]
    explicit = [[], ["car"], []]
    proposals = propose(logits, thresholds, NAMES, labels, explicit)
    # Clip 0: bird is a positive already; car (1.0 > 0.5) and dog (-1 > -2) proposed, larger margin first.
    assert proposals[0].labels == ["dog", "car"]
    np.testing.assert_allclose(proposals[0].margins, [1.0, 0.5])
    np.testing.assert_allclose(proposals[0].scores, expit([-1.0, 1.0]), rtol=1e-6)
    # Clip 1: car clears its threshold but is an explicit negative; bird is below; dog 0.2 > 0.
    assert proposals[1].labels == ["dog"]
    # Clip 2: logit == threshold is not present; unknown labels are ignored.
    assert proposals[2].labels == []


def test_min_margin_and_shape_check() -> None:
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    thresholds = np.zeros((1, 3), np.float32)
    assert propose(logits, thresholds, NAMES, [[]], [[]], min_margin=1.5)[0].labels == ["dog", "car"]
    with pytest.raises(ValueError, match="expected"):
        propose(logits, thresholds, NAMES, [[], []], [[], []])


def test_summary_counts_per_class_and_truth() -> None:
    summary = ProposalSummary(NAMES)
    summary.update(
        labels=[["bird"], [], ["car"]],
        explicit_negatives=[["dog"], [], []],
        removed_labels=[["car"], ["dog"], []],
        proposed=[["car"], ["bird", "dog"], []],
        rejected=[False, False, True],
    )
    result = summary.to_dict()
    assert result["total"] == {
        "clips": 3,
        "clips_scanned": 2,
        "rejected": 1,
        "proposals": 3,
        "proposal_rate": 1.5,
        "removed_labels": 2,
        "proposals_in_removed": 2,
        "precision": 2 / 3,
        "recall": 1.0,
    }
    bird, car, dog = (result["per_class"][name] for name in NAMES)
    assert (bird["labelled"], bird["implicit_negatives"], bird["proposals"], bird["precision"]) == (1, 1, 1, 0.0)
    assert (car["proposals"], car["proposal_rate"], car["recall"]) == (1, 0.5, 1.0)
    assert (dog["explicit_negatives"], dog["implicit_negatives"], dog["proposals_in_removed"]) == (1, 1, 1)
    assert "precision" not in ProposalSummary(NAMES).to_dict()["total"]  # no removed labels: no truth


def test_review_queue_keeps_the_most_confident_per_class() -> None:
    queue = ReviewQueue(cap=2)
    for row, (label, margin) in enumerate([("car", 0.1), ("car", 2.0), ("bird", 0.3), ("car", 2.0), ("car", 1.0)]):
        queue.add(label, margin, row, {"clip_id": f"c{row}", "margin": margin})
        queue.trim()
    rows = queue.rows()
    assert [(r["label"], r["rank"], r["clip_id"]) for r in rows] == [
        ("bird", 1, "c2"),
        ("car", 1, "c1"),  # ties by margin: the earlier row first
        ("car", 2, "c3"),
    ]
    empty = ReviewQueue(cap=0)
    empty.add("car", 1.0, 0, {})
    assert empty.rows() == []


def test_part_assembler_hands_over_complete_parts_in_row_order() -> None:
    assembler = PartAssembler(total_rows=5, rows_per_part=2)
    batch = pa.table({"row_index": pa.array([3, 0, 4], pa.int64()), "x": ["d", "a", "e"]})
    done = list(assembler.add(batch))
    assert [(part, rows["x"].to_pylist()) for part, rows in done] == [(2, ["e"])]
    assert assembler.incomplete == [0, 1]
    done = list(assembler.add(pa.table({"row_index": pa.array([2, 1], pa.int64()), "x": ["c", "b"]})))
    assert [(part, rows["x"].to_pylist()) for part, rows in done] == [(0, ["a", "b"]), (1, ["c", "d"])]
    assert assembler.incomplete == []


def test_relabel_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of batch_size"):
        RelabelConfig(rows_per_part=50, batch_size=32)
    with pytest.raises(ValueError, match="max_actors"):
        RelabelConfig(min_actors=3, max_actors=2)


def test_relabel_help_and_job_entry_point() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["relabel", "--help"])
    assert exit_info.value.code == 0
    job = Path(__file__).resolve().parents[1] / "jobs" / "relabel.py"
    result = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True, check=True)
    assert "--bundle" in result.stdout and "--max-actors" in result.stdout
