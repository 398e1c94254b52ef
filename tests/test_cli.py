"""The `raymlc` command line: help on every command, clear errors, a local train/evaluate round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raymlc.cli import build_parser, main
from raymlc.data import normalize_manifest

COMMANDS = [
    "make-demo",
    "make-mixtures",
    "train",
    "pipeline",
    "sweep",
    "relabel",
    "evaluate",
    "predict",
    "serve",
    "review",
    "apply-review",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"raymlc {command}" in capsys.readouterr().out


def test_every_subcommand_is_listed() -> None:
    listed = build_parser()._subparsers._group_actions[0].choices
    assert set(COMMANDS) == set(listed)


def test_missing_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--output", str(tmp_path)]) == 2
    assert "nope.yaml: cannot read config" in capsys.readouterr().err


def test_invalid_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"manifest": "m.parquet"}, "train": {"epochs": 0, "bogus": 1}}))
    assert main(["train", "--config", str(path), "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "train.epochs" in error and "train.bogus" in error


def test_make_demo_rejects_bad_drop_fraction(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["make-demo", "--output", str(tmp_path), "--drop-fraction", "1.5"]) == 2
    assert "drop_fraction" in capsys.readouterr().err


def test_train_then_evaluate_on_features(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(240, 6)).astype(np.float32)
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": [f"c{i}" for i in range(240)],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 6),
                "labels": [[name for k, name in enumerate("xy") if row[k] > 0] for row in features],
                "split": ["train"] * 160 + ["val"] * 40 + ["test"] * 40,
            }
        )
    )
    pq.write_table(table, tmp_path / "m.parquet")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"manifest": str(tmp_path / "m.parquet")},
                "model": {"kind": "mlp", "hidden": [16], "embedding_dim": 8, "dropout": 0.0},
                "train": {"epochs": 15, "lr": 0.01},
            }
        )
    )
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["map"] > 0.9 and len(metrics["history"]) == 15
    assert "test: mAP" in capsys.readouterr().out

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test"] == pytest.approx(metrics["test"])
