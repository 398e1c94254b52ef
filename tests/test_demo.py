"""The synthetic demo dataset: manifest, splits, recorded label removal, determinism, audio."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymlc.config import DemoConfig
from raymlc.data.audio import decode_audio
from raymlc.data.demo import DEMO_CLASSES, make_demo
from raymlc.data.schema import normalize_manifest

TINY = DemoConfig(seed=7, sample_rate=8000, clip_seconds=1.0, n_train=30, n_val=10, n_test=10)


def _rows(manifest) -> list[dict]:
    return pq.read_table(manifest).to_pylist()


def _true_labels(row: dict) -> list[str]:
    return [event["label"] for event in json.loads(row["events"])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    calls: list[tuple[int, int]] = []
    manifest = make_demo(tmp_path_factory.mktemp("demo"), TINY, progress=lambda *call: calls.append(call))
    return manifest, calls


def test_manifest_schema_splits_and_classes(tiny):
    manifest, calls = tiny
    table = pq.read_table(manifest)
    assert table.equals(normalize_manifest(table))
    assert {"n_events", "events"} <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["split"] for r in rows] == ["train"] * 30 + ["val"] * 10 + ["test"] * 10
    assert len({r["clip_id"] for r in rows}) == 50
    assert json.loads((manifest.parent / "classes.json").read_text()) == list(DEMO_CLASSES)
    assert len(DEMO_CLASSES) >= 10 and len(set(DEMO_CLASSES)) == len(DEMO_CLASSES)
    assert calls[-1] == (50, 50)


def test_labels_and_removals_reconstruct_the_true_events(tiny):
    for row in _rows(tiny[0]):
        truth = _true_labels(row)
        assert TINY.min_events <= len(truth) == row["n_events"] <= TINY.max_events
        assert len(set(truth)) == len(truth) and set(truth) <= set(DEMO_CLASSES)
        assert not set(row["labels"]) & set(row["removed_labels"])
        assert sorted(row["labels"] + row["removed_labels"]) == sorted(truth)
        if row["split"] != "train":
            assert row["removed_labels"] == [] and row["explicit_negatives"] == []


def test_explicit_negatives_are_true_negatives(tiny):
    train = [r for r in _rows(tiny[0]) if r["split"] == "train"]
    with_negatives = [r for r in train if r["explicit_negatives"]]
    assert 0 < len(with_negatives) < len(train)
    for row in with_negatives:
        assert len(row["explicit_negatives"]) == 2
        assert not set(row["explicit_negatives"]) & set(_true_labels(row))


def test_audio_files_decode_to_clip_length(tiny):
    for row in _rows(tiny[0])[::10]:
        assert row["audio"].endswith(f"audio/{row['split']}/{row['clip_id']}.flac")
        wave = decode_audio(row["audio"], clip_id=row["clip_id"], sample_rate=TINY.sample_rate)
        assert len(wave) == TINY.sample_rate and 0.2 < np.abs(wave).max() <= 0.91


def test_same_seed_same_dataset(tiny, tmp_path):
    columns = ["clip_id", "labels", "removed_labels", "explicit_negatives", "events"]
    again = make_demo(tmp_path / "again", TINY)
    assert pq.read_table(again, columns=columns).equals(pq.read_table(tiny[0], columns=columns))
    first, second = _rows(tiny[0])[0]["audio"], _rows(again)[0]["audio"]
    np.testing.assert_array_equal(
        decode_audio(first, clip_id="a", sample_rate=TINY.sample_rate),
        decode_audio(second, clip_id="b", sample_rate=TINY.sample_rate),
    )
    other = make_demo(tmp_path / "other", TINY.model_copy(update={"seed": 8}))
    assert not pq.read_table(other, columns=columns).equals(pq.read_table(tiny[0], columns=columns))


@pytest.mark.parametrize(("removal", "fraction"), [("structured", 0.3), ("random", 0.3), ("structured", 0.6)])
def test_removed_fraction_matches_drop_fraction(tmp_path, removal, fraction):
    update = {"n_train": 200, "n_val": 1, "n_test": 1, "clip_seconds": 0.5}
    config = TINY.model_copy(update={**update, "removal": removal, "drop_fraction": fraction})
    train = [r for r in _rows(make_demo(tmp_path, config)) if r["split"] == "train"]
    removed = sum(len(r["removed_labels"]) for r in train)
    positives = removed + sum(len(r["labels"]) for r in train)
    assert abs(removed - fraction * positives) <= 1


def test_structured_removal_drops_faint_and_overlapped_events(tmp_path):
    config = TINY.model_copy(update={"n_train": 200, "n_val": 1, "n_test": 1})
    kept, dropped = [], []
    for row in _rows(make_demo(tmp_path, config)):
        for event in json.loads(row["events"]):
            (dropped if event["label"] in row["removed_labels"] else kept).append(event)
    assert np.mean([e["level_db"] for e in dropped]) < np.mean([e["level_db"] for e in kept]) - 5
    assert np.mean([e["overlap"] for e in dropped]) > np.mean([e["overlap"] for e in kept])


def test_no_removal_when_drop_fraction_is_zero(tmp_path):
    rows = _rows(make_demo(tmp_path, TINY.model_copy(update={"drop_fraction": 0.0})))
    assert all(r["removed_labels"] == [] and r["labels"] for r in rows)


def test_too_many_events_per_clip_is_refused(tmp_path):
    config = TINY.model_copy(update={"max_events": len(DEMO_CLASSES) + 1})
    with pytest.raises(ValueError, match="max_events"):
        make_demo(tmp_path, config)
