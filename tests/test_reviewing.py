"""Reviewing without a server: durable decision logs, how reviewers combine, applying a review to a manifest,
and the flagger never flagging what a reviewer rejected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlc.config import TaggerConfig
from raymlc.data import LabelVocabulary, normalize_manifest, read_manifest
from raymlc.data.dataset import load_split
from raymlc.flagging import flag_mask_for, flags_from_pairs, select_top
from raymlc.reviewing import (
    Decision,
    DecisionLog,
    ReviewError,
    apply_review,
    queue_from_flags,
    read_queue,
    resolve_decisions,
    write_reviewed_manifest,
)


def manifest() -> pa.Table:
    return normalize_manifest(
        pa.table(
            {
                "clip_id": ["a", "b", "c"],
                "audio": ["a.wav", "b.wav", "c.wav"],
                "labels": [["dog"], [], ["cat"]],
                "explicit_negatives": [[], ["bird"], []],
                "removed_labels": [["cat"], ["dog"], []],
                "split": ["train"] * 3,
            }
        )
    )


def test_the_log_keeps_every_acknowledged_decision_and_ignores_a_torn_line(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path)
    log.append(Decision.now("a", "cat", "present", "ann"))
    log.append(Decision.now("b", "dog", "absent", "ann"))
    log.append(Decision.now("a", "cat", "absent", "bob"))
    with open(log.path("ann"), "ab") as file:  # a crash in the middle of a write leaves half a line
        file.write(b'{"clip_id": "c", "label": "do')
    decisions = DecisionLog(tmp_path).read()
    assert [(d.clip_id, d.label, d.decision, d.reviewer) for d in decisions] == [
        ("a", "cat", "present", "ann"),
        ("b", "dog", "absent", "ann"),
        ("a", "cat", "absent", "bob"),
    ]
    lines = log.path("bob").read_text().splitlines()
    assert json.loads(lines[0])["decided_at"].endswith("+00:00")
    with pytest.raises(ReviewError, match="decision 'maybe'"):
        Decision.now("a", "cat", "maybe", "ann")
    with pytest.raises(ReviewError, match="reviewer name"):
        log.path("../etc")


def test_last_decision_per_reviewer_wins_unsure_abstains_and_disagreement_is_a_conflict() -> None:
    def d(clip: str, label: str, decision: str, reviewer: str) -> Decision:
        return Decision(clip, label, decision, reviewer, "t")

    resolved = resolve_decisions(
        [
            d("a", "cat", "absent", "ann"),
            d("a", "cat", "present", "ann"),  # ann changed her mind
            d("a", "cat", "unsure", "bob"),  # bob abstains
            d("b", "dog", "present", "ann"),
            d("b", "dog", "absent", "bob"),  # disagreement
            d("c", "dog", "unsure", "ann"),
        ]
    )
    assert {key: r.decision for key, r in resolved.items()} == {
        ("a", "cat"): "present",
        ("b", "dog"): "conflict",
        ("c", "dog"): "unsure",
    }
    assert resolved[("a", "cat")].reviewers == ("ann:present", "bob:unsure")


def test_apply_review_adds_labels_and_explicit_negatives_and_records_provenance() -> None:
    decisions = [
        Decision("a", "cat", "present", "ann", "t"),
        Decision("b", "dog", "absent", "ann", "t"),
        Decision("b", "bird", "present", "ann", "t"),  # the manifest verified bird absent: contradicted
        Decision("zzz", "dog", "present", "ann", "t"),
    ]
    table, summary = apply_review(manifest(), decisions)
    rows = {row["clip_id"]: row for row in table.to_pylist()}
    assert rows["a"]["labels"] == ["dog", "cat"] and rows["a"]["explicit_negatives"] == []
    assert rows["b"]["labels"] == [] and rows["b"]["explicit_negatives"] == ["bird", "dog"]
    assert rows["c"]["labels"] == ["cat"] and rows["c"]["review"] == []
    assert rows["b"]["review"] == [
        {"label": "bird", "decision": "contradicted", "reviewers": ["ann:present"]},
        {"label": "dog", "decision": "absent", "reviewers": ["ann:absent"]},
    ]
    assert (summary["accepted"], summary["rejected"], summary["contradicted"]) == (1, 1, 1)
    assert summary["unknown_clip_ids"] == ["zzz"] and "conflict" in summary["conflict_rule"]


def test_the_flagger_never_flags_a_label_a_reviewer_rejected(tmp_path: Path) -> None:
    """b/dog is the teacher's top implicit negative for dog; after "absent" it is an explicit negative."""
    source = tmp_path / "in.parquet"
    pq.write_table(manifest(), source)
    log = DecisionLog(tmp_path / "review")
    log.append(Decision.now("b", "dog", "absent", "ann"))
    output = tmp_path / "reviewed.parquet"
    write_reviewed_manifest(str(source), log.directory, output)
    assert pq.read_table(source).equals(manifest())  # the input is untouched
    config = TaggerConfig.model_validate({"data": {"manifest": str(output)}})
    vocabulary = LabelVocabulary(["bird", "cat", "dog"])
    scores = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.9], [0.1, 0.2, 0.5]])  # b scores highest on dog
    flags = {}
    for name, path in (("before", source), ("after", output)):
        split = load_split(read_manifest(str(path)), vocabulary, "train", config, decode=False)
        budget = np.ones(3, np.int64)
        flags[name] = flag_mask_for(np.arange(3), select_top(scores, split.targets, split.explicit_negatives, budget))
    assert flags["before"][1, 2] and not flags["after"][1, 2]
    assert flags["after"][2, 2]  # the next best implicit negative takes the dog flag
    with pytest.raises(ReviewError, match="exists already"):
        write_reviewed_manifest(str(source), log.directory, output)


def test_a_pipeline_queue_reads_back_in_the_queue_schema(tmp_path: Path) -> None:
    train = manifest()
    vocabulary = LabelVocabulary(["bird", "cat", "dog"])
    flags = flags_from_pairs(np.array([0, 1]), np.array([1, 2]), 3, scores=np.array([0.8, 0.6]))
    queue = queue_from_flags(flags, train, vocabulary, top=5)
    pq.write_table(queue, tmp_path / "flag_top.parquet")
    read = read_queue(str(tmp_path)).to_pylist()
    assert [(r["label"], r["clip_id"], r["labels"], r["removed"], r["margin"]) for r in read] == [
        ("cat", "a", ["dog"], True, None),
        ("dog", "b", [], True, None),
    ]
    os.remove(tmp_path / "flag_top.parquet")
    with pytest.raises(ReviewError, match="no review queue"):
        read_queue(str(tmp_path))


def test_the_commands_report_bad_input_and_write_the_reviewed_manifest(tmp_path: Path, capsys) -> None:
    from raymlc.cli import main

    assert main(["review", "--queue", str(tmp_path)]) == 2
    assert "no review queue" in capsys.readouterr().err
    source, output = tmp_path / "in.parquet", tmp_path / "out" / "reviewed.parquet"
    pq.write_table(manifest(), source)
    arguments = ["apply-review", "--input", str(source), "--decisions", str(tmp_path / "review"), "--output"]
    assert main([*arguments, str(output)]) == 2 and "no decisions" in capsys.readouterr().err
    DecisionLog(tmp_path / "review").append(Decision.now("c", "dog", "present", "ann"))
    assert main([*arguments, str(tmp_path / "reviewed.csv")]) == 2 and "*.parquet" in capsys.readouterr().err
    assert main([*arguments, str(output)]) == 0
    assert "1 accepted" in capsys.readouterr().out
    assert read_manifest(str(output)).column("labels").to_pylist()[2] == ["cat", "dog"]
