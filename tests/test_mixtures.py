"""FSDD digit mixtures: speaker-disjoint splits, labels vs sources, label removal, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from pydantic import ValidationError

from raymlc.cli import main
from raymlc.config import ConfigError, MixtureConfig
from raymlc.data import read_manifest
from raymlc.data.audio import decode_audio
from raymlc.data.mixtures import DIGITS, make_fsdd_mixtures
from raymlc.data.schema import normalize_manifest

SMALL = MixtureConfig(seed=3, n_train=300, n_val=30, n_test=30)
TINY = MixtureConfig(seed=5, n_train=12, n_val=4, n_test=4)


def _recordings(shared_data: Path) -> Path:
    return shared_data / "fsdd_dev" / "recordings"


def _speaker(source: str) -> str:
    return source.split("_")[1]


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory) -> tuple[Path, list[dict], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("mixtures")
    manifest = make_fsdd_mixtures(_recordings(shared_data), out, SMALL, progress=lambda *call: calls.append(call))
    return manifest, pq.read_table(manifest).to_pylist(), calls


def _events(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(row, event) pairs with each event's level deficit below the loudest digit of its clip."""
    pairs = []
    for row in rows:
        events = json.loads(row["events"])
        loudest = max(event["gain_db"] for event in events)
        pairs += [(row, event | {"deficit": loudest - event["gain_db"]}) for event in events]
    return pairs


def test_manifest_reads_back_in_the_normalized_schema(small):
    manifest, rows, calls = small
    table = read_manifest(str(manifest))
    assert table.equals(normalize_manifest(pq.read_table(manifest)))
    assert {"sources", "n_events", "events"} <= set(table.column_names)
    assert [r["split"] for r in rows] == ["train"] * 300 + ["val"] * 30 + ["test"] * 30
    assert json.loads((manifest.parent / "classes.json").read_text()) == list(DIGITS)
    assert calls[-1] == (360, 360)
    info = sf.info(rows[0]["audio"])
    assert (info.samplerate, info.frames, info.channels) == (8000, 16000, 1)


def test_splits_use_disjoint_speakers(small):
    speakers = {
        split: {_speaker(s) for r in small[1] if r["split"] == split for s in r["sources"]}
        for split in ("train", "val", "test")
    }
    assert speakers == {"train": {"george", "jackson"}, "val": {"lucas"}, "test": {"nicolas"}}


def test_labels_match_the_mixed_sources(small):
    for row in small[1]:
        digits = [source.split("_")[0] for source in row["sources"]]
        assert 1 <= len(digits) == len(set(digits)) == row["n_events"] <= 3
        assert not set(row["labels"]) & set(row["removed_labels"])
        assert sorted(row["labels"] + row["removed_labels"]) == sorted(digits)
        assert [e["source"] for e in json.loads(row["events"])] == row["sources"]
        assert not set(row["explicit_negatives"]) & set(digits)


def test_single_digit_clips_contain_their_recording(small, shared_data):
    """The clip at the recorded onset is the source recording (up to gain and the −40 dB noise floor)."""
    singles = [r for r in small[1] if r["n_events"] == 1 and r["split"] == "test"]
    assert len(singles) >= 5
    for row in singles:
        event = json.loads(row["events"])[0]
        source = decode_audio(_recordings(shared_data) / event["source"], clip_id=event["source"], sample_rate=8000)
        clip = decode_audio(row["audio"], clip_id=row["clip_id"], sample_rate=8000)
        start = round(event["onset_s"] * 8000)
        segment = clip[start : start + len(source)]
        assert np.corrcoef(segment, source)[0, 1] > 0.97, row["clip_id"]
        assert np.abs(clip).max() == pytest.approx(0.9, abs=1e-3)


def test_removal_only_on_train_at_the_drop_fraction(small):
    rows = small[1]
    assert all(not r["removed_labels"] and not r["explicit_negatives"] for r in rows if r["split"] != "train")
    train = [r for r in rows if r["split"] == "train"]
    removed = sum(len(r["removed_labels"]) for r in train)
    positives = removed + sum(len(r["labels"]) for r in train)
    assert abs(removed / positives - SMALL.drop_fraction) <= 1.5 / positives
    assert 0.15 < np.mean([bool(r["explicit_negatives"]) for r in train]) < 0.45


def test_structured_removal_drops_quieter_digits_more_often(small):
    pairs = _events([r for r in small[1] if r["split"] == "train"])
    dropped = np.array([event["label"] in row["removed_labels"] for row, event in pairs])
    deficit = np.array([event["deficit"] for _, event in pairs])
    single = np.array([row["n_events"] == 1 for row, _ in pairs])
    quiet, loudest = dropped[deficit > 6], dropped[deficit == 0]
    assert len(quiet) > 50 and len(loudest) > 200
    assert quiet.mean() > 0.6 > 0.15 > loudest.mean()
    assert dropped[single].mean() < 0.1


def test_random_removal_is_uniform(shared_data, tmp_path):
    config = SMALL.model_copy(update={"removal": "random", "n_val": 1, "n_test": 1})
    rows = pq.read_table(make_fsdd_mixtures(_recordings(shared_data), tmp_path, config)).to_pylist()
    pairs = _events([r for r in rows if r["split"] == "train"])
    dropped = np.array([event["label"] in row["removed_labels"] for row, event in pairs])
    deficit = np.array([event["deficit"] for _, event in pairs])
    assert abs(dropped.mean() - 0.3) <= 1.5 / len(dropped)
    assert 0.2 < dropped[deficit == 0].mean() < 0.4 and 0.2 < dropped[deficit > 6].mean() < 0.4


def test_same_seed_same_bytes_other_seed_other_clips(shared_data, tmp_path):
    recordings = _recordings(shared_data)
    runs = [
        make_fsdd_mixtures(recordings, tmp_path / name, TINY.model_copy(update={"seed": seed}))
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    ]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.flac"))
    assert len(files) == 20
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    tables = [pq.read_table(m).drop_columns(["audio"]) for m in runs]
    assert tables[0].equals(tables[1]) and not tables[0].equals(tables[2])
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()


def test_resampled_clips_and_custom_speakers(shared_data, tmp_path):
    config = TINY.model_copy(
        update={"sample_rate": 16000, "train_speakers": ["lucas"], "val_speakers": ["george"], "noise_db": None}
    )
    rows = pq.read_table(make_fsdd_mixtures(_recordings(shared_data), tmp_path, config)).to_pylist()
    assert {_speaker(s) for r in rows if r["split"] == "train" for s in r["sources"]} == {"lucas"}
    assert sf.info(rows[0]["audio"]).samplerate == 16000 and sf.info(rows[0]["audio"]).frames == 32000


def test_bad_recordings_dir_is_a_clear_error(shared_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        make_fsdd_mixtures(tmp_path / "absent", tmp_path / "out", TINY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "seven.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no recordings named \{digit\}_\{speaker\}_\{take\}\.wav"):
        make_fsdd_mixtures(tmp_path / "other", tmp_path / "out", TINY)
    with pytest.raises(ConfigError, match="val_speakers \\['alice'\\] have no recordings"):
        make_fsdd_mixtures(
            _recordings(shared_data), tmp_path / "out", TINY.model_copy(update={"val_speakers": ["alice"]})
        )
    status = main(["make-mixtures", "--recordings", str(tmp_path / "absent"), "--output", str(tmp_path / "out")])
    assert status == 2


def test_config_validation():
    with pytest.raises(ValidationError, match=r"george.*train_speakers and test_speakers"):
        MixtureConfig(test_speakers=["george"])
    with pytest.raises(ValidationError, match="max_digits must be >= min_digits"):
        MixtureConfig(min_digits=3, max_digits=2)
    with pytest.raises(ValidationError, match="extra"):
        MixtureConfig.model_validate({"n_clips": 3})


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["make-mixtures", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--recordings", "--drop-fraction", "--removal"))


def test_cli_writes_the_dataset(shared_data, tmp_path, capsys):
    config = tmp_path / "mix.yaml"
    config.write_text("n_train: 6\nn_val: 2\nn_test: 2\n")
    args = ["make-mixtures", "--recordings", str(_recordings(shared_data)), "--output", str(tmp_path / "out")]
    assert main([*args, "--config", str(config), "--seed", "4", "--removal", "random", "--drop-fraction", "0.5"]) == 0
    rows = read_manifest(str(tmp_path / "out" / "manifest.parquet")).to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    assert len(rows) == 10
    removed = sum(len(r["removed_labels"]) for r in train)
    assert abs(removed - 0.5 * (removed + sum(len(r["labels"]) for r in train))) <= 1
    assert "wrote" in capsys.readouterr().out
