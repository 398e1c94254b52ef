"""End to end: `raymlc pipeline` on a tiny demo with one corrupt clip, on the session's local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from flag_reference import multi_hot, scores_table_flags
from sklearn.metrics import average_precision_score

from raymlc.bundle import load_bundle
from raymlc.checkpoint import load_checkpoint
from raymlc.config import DemoConfig, PipelineConfig
from raymlc.data import LabelVocabulary
from raymlc.data.audio import decode_audio
from raymlc.data.demo import make_demo
from raymlc.distributed.teacher_student import run_pipeline
from raymlc.flagging import crossfit_folds, load_flags
from raymlc.scoring import score_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-second demo with 80 train clips, plus one corrupt train clip appended to the manifest."""
    root = tmp_path_factory.mktemp("demo")
    manifest = make_demo(root, DemoConfig(n_train=80, n_val=24, n_test=24, clip_seconds=1.0, seed=3))
    table = pq.read_table(manifest)
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    row = table.slice(0, 1).to_pylist()[0] | {"clip_id": "corrupt-clip", "audio": str(corrupt)}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), manifest)
    return manifest


def sklearn_map(targets: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's AP per class, averaged over the classes that have a positive (as `metrics.map` does)."""
    present = targets.any(axis=0)
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]))


def reference_test_map(checkpoint: Path, test: pa.Table, sample_rate: int, window: int) -> float:
    """mAP of a saved model on the clean test labels (`labels` ∪ `removed_labels`), scored here clip by clip."""
    model, _, vocabulary = load_checkpoint(checkpoint)
    waves = [
        decode_audio(
            row["audio"], clip_id=row["clip_id"], sample_rate=sample_rate, start_s=row["start_s"], end_s=row["end_s"]
        )
        for row in test.to_pylist()
    ]
    logits, _ = score_batch(model.eval(), waves, window)
    clean = [
        (a or []) + (b or [])
        for a, b in zip(test["labels"].to_pylist(), test["removed_labels"].to_pylist(), strict=True)
    ]
    return sklearn_map(multi_hot(clean, vocabulary.names), logits.numpy().astype(np.float64))


def test_pipeline_runs_every_stage(ray_session, tiny_demo: Path, tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(
        {
            "data": {"manifest": str(tiny_demo)},
            "frontend": {"window_seconds": 1.0, "n_mels": 32},
            "model": {"channels": [8, 16], "embedding_dim": 16},
            "train": {"epochs": 2, "batch_size": 16},
            "ray": {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "ray")},
            "scoring": {"batch_size": 16, "min_actors": 1, "max_actors": 1},
            "flagging": {"percent": 5.0, "report_top": 2},
        }
    )
    output = tmp_path / "run"
    lines: list[str] = []
    metrics = run_pipeline(config, output, log=lines.append)

    on_disk = json.loads((output / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    # Every model's test mAP against scikit-learn on the clean test split, scored here from its checkpoint.
    manifest = pq.read_table(tiny_demo)
    test = manifest.filter(pc.equal(manifest["split"], "test"))
    for name in ("teacher", "student", "perfect_mask", "oracle"):
        assert set(metrics[name]) == {"map", "d_prime", "lwlrap", "micro_f1", "macro_f1"}
        reference = reference_test_map(output / name / "checkpoint.pt", test, 16000, 16000)
        assert metrics[name]["map"] == pytest.approx(reference, abs=1e-6), name
    assert (output / "report.md").exists() and (output / "ap_per_class.png").exists()

    # The corrupt clip is reported with a reason and left out (before the teacher); every other train clip is
    # scored once.
    rejects = pq.read_table(output / "rejects.parquet").to_pylist()
    assert [r["clip_id"] for r in rejects] == ["corrupt-clip"] and rejects[0]["reason"]
    assert any("corrupt-clip" in line for line in lines)
    scores = pq.read_table(output / "scores")
    assert len(scores) == 80 and len(set(scores["clip_id"].to_pylist())) == 80
    assert "corrupt-clip" not in scores["clip_id"].to_pylist()

    # Flags: 5 % of each class's implicit negatives (round half up), never a positive or explicit negative.
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    train = train.filter(pc.not_equal(train["clip_id"], "corrupt-clip"))
    vocabulary = LabelVocabulary.from_table(manifest)
    flags = pq.read_table(output / "flags")
    by_clip = dict(zip(flags["clip_id"].to_pylist(), flags["flagged"].to_pylist(), strict=True))
    ids = train["clip_id"].to_pylist()
    flagged = vocabulary.encode([by_clip[i] for i in ids], ids).astype(bool)
    positives = vocabulary.encode(train["labels"].to_pylist(), ids).astype(bool)
    explicit = vocabulary.encode(train["explicit_negatives"].to_pylist(), ids).astype(bool)
    assert not (flagged & (positives | explicit)).any()
    implicit = (~(positives | explicit)).sum(axis=0)
    np.testing.assert_array_equal(flagged.sum(axis=0), np.floor(implicit * 0.05 + 0.5))
    assert metrics["flags"]["count"] == int(flagged.sum())

    # The saved flags are exactly the brute-force top 5 % of the teacher's scores, per class in rank order,
    # and the human-readable table names exactly those labels on each scored clip.
    saved = load_flags(str(output / "flags.parquet"))
    expected = scores_table_flags(scores, vocabulary.names, 5)
    assert saved.num_classes == len(vocabulary) and sum(len(rows) for rows in expected) == metrics["flags"]["count"] > 0
    for c, rows in enumerate(expected):
        np.testing.assert_array_equal(saved.class_rows(c), rows, err_msg=vocabulary.names[c])
    named = {int(row): set() for row in scores.filter(pc.is_null(scores["error"]))["row_index"].to_pylist()}
    for c, rows in enumerate(expected):
        for row in rows:
            named[int(row)].add(vocabulary.names[c])
    table_flags = {
        row: set(labels)
        for row, labels in zip(flags["row_index"].to_pylist(), flags["flagged"].to_pylist(), strict=True)
    }
    assert table_flags == named

    # The perfect mask flags exactly the removed labels of the readable train clips (positions among them).
    perfect = load_flags(str(output / "perfect_flags.parquet"))
    removed = multi_hot(train["removed_labels"].to_pylist(), vocabulary.names)
    perfect_pairs = {(int(r), c) for c in range(len(vocabulary)) for r in perfect.class_rows(c)}
    assert perfect_pairs == {(int(r), int(c)) for r, c in zip(*np.nonzero(removed), strict=True)} and perfect_pairs

    # A rerun finds every stage done and only re-evaluates.
    rerun_lines: list[str] = []
    assert run_pipeline(config, output, log=rerun_lines.append)["teacher"] == metrics["teacher"]
    assert any("teacher: already trained" in line for line in rerun_lines)

    # The student's tagger bundle, with adaptive thresholds, tags a clip.
    tagger = load_bundle(str(output / "bundle"))
    assert tagger.vocabulary.names == vocabulary.names
    result = tagger.tag([tagger.read_input(train.slice(0, 1)["audio"][0].as_py())])
    assert result.present.shape == (1, len(vocabulary))


def test_pipeline_crossfit_scores_each_fold_out_of_sample(ray_session, tiny_demo: Path, tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(
        {
            "data": {"manifest": str(tiny_demo)},
            "frontend": {"window_seconds": 1.0, "n_mels": 32},
            "model": {"channels": [8], "embedding_dim": 8},
            "train": {"epochs": 1, "batch_size": 16},
            "ray": {"num_workers": 1, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "ray")},
            "scoring": {"batch_size": 16, "min_actors": 1, "max_actors": 1},
            "flagging": {"percent": 5.0, "crossfit_folds": 2, "report_top": 0},
            "references": False,
        }
    )
    output = tmp_path / "run"
    run_pipeline(config, output, log=lambda line: None)

    # Every readable train clip (the corrupt one is rejected before the teachers) was scored once, by the
    # teacher of the fold that did not train on it.
    manifest = pq.read_table(tiny_demo)
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    train = train.filter(pc.not_equal(train["clip_id"], "corrupt-clip"))
    folds = crossfit_folds(len(train), 2, config.train.seed)
    for fold in range(2):
        scored = pq.read_table(output / "scores" / f"fold{fold}").sort_by("row_index")
        scored = scored.filter(pc.is_null(scored["error"]))
        expected = np.flatnonzero(folds == fold).tolist()
        assert scored["row_index"].to_pylist() == expected
        model, _, _ = load_checkpoint(output / f"teacher-fold{fold}" / "checkpoint.pt")
        row = train.slice(expected[0], 1).to_pylist()[0]
        wave = decode_audio(row["audio"], clip_id=row["clip_id"], sample_rate=16000)
        logits, _ = score_batch(model.eval(), [wave], 16000)
        np.testing.assert_allclose(scored["scores"][0].as_py(), 1 / (1 + np.exp(-logits[0].numpy())), rtol=1e-4)
    assert (output / "bundle" / "metadata.json").exists()
