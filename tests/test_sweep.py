"""`raymlc sweep`: the pure helpers (search space, configs, results, curve, in-process flags) and the ASHA
scheduler without a Ray instance, and one slow end-to-end sweep whose driver is killed mid-run and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from flag_reference import brute_force_flags, scores_table_flags
from sweep_fixtures import write_tiny_sweep
from torch import nn

from raymlc.config import ConfigError, FlaggingConfig, PipelineConfig, SearchSpaceConfig, SweepConfig, load_config
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import SplitData
from raymlc.distributed.flagging import select_flags_local
from raymlc.flagging import load_flags
from raymlc.models import TaggerOutput
from raymlc.sweep import (
    best_row,
    load_sweep_config,
    plot_curve,
    reference_points,
    suggest_params,
    trial_config,
    validation_macro_f1,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"manifest": "m.parquet"}, "train": {"lr": 0.01}, "flagging": {"percent": 2.0}}


# ---------------------------------------------------------------- config and search space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"low": 0.01, "high": 0.001}}, "must be < high"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "low > 0"),
        ({"discard_percent": {"low": 1, "high": 200}}, "space.discard_percent must lie in [0.0, 100.0]"),
        ({"lam": 1.5}, "space.lam must lie in [0.0, 1.0]"),
        ({"loss": []}, "at least 1 item"),
        ({"temperature": 1.0}, "Extra inputs are not permitted"),
    ],
)
def test_search_space_rejects_bad_ranges(space: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SearchSpaceConfig.model_validate(space)


def test_sweep_config_file_base_path_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(tmp_path / "base.yaml"), "epochs": 3, "asha": {"grace_period": 2}}))
    sweep = load_sweep_config(path, num_trials=5, seeds=None)
    assert (sweep.num_trials, sweep.seeds) == (5, 2)
    assert sweep.pipeline().train.lr == 0.01 and sweep.student_epochs(sweep.pipeline()) == 3
    with pytest.raises(ConfigError, match=r"(?s)sweep.yaml: invalid override:\n.*num_trials"):
        load_sweep_config(path, num_trials=0)
    with pytest.raises(ConfigError, match=r"asha.grace_period \(2\) must be below the trial epochs \(2\)"):
        load_sweep_config(path, epochs=2)
    path.write_text(yaml.safe_dump({"base": str(tmp_path / "missing.yaml")}))
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config"):
        load_sweep_config(path)
    path.write_text(yaml.safe_dump({"base": BASE, "objective": "accuracy"}))
    with pytest.raises(ConfigError, match="objective"):
        load_config(path, SweepConfig)


@pytest.mark.parametrize("no_mask", ["reference", "searched", "never"])
def test_suggest_params_samples_every_range_and_p0_only_as_configured(no_mask: str) -> None:
    space = SearchSpaceConfig.model_validate({"margin": 0.3, "loss": ["bce"], "no_mask": no_mask})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    zero = []
    for _ in range(30):
        trial = study.ask()
        fixed = suggest_params(space, trial)
        params = trial.params | fixed
        assert params["margin"] == 0.3 and params["loss"] == "bce"
        assert 5e-4 <= params["lr"] <= 5e-3 and 0 <= params["lam"] <= 1 and 0 <= params["margin_weight"] <= 0.5
        assert params["discard_percent"] == 0.0 or 0.05 <= params["discard_percent"] <= 20
        if params["discard_percent"] == 0.0:
            zero.append(trial.number)
            assert "discard_percent" not in trial.params  # p = 0 never enters the log range
        study.tell(trial, 0.0)
    if no_mask == "reference":
        assert zero == [0]  # the first trial: `reference_points` enqueues the no-mask reference first
    elif no_mask == "never":
        assert zero == []
    else:
        assert 5 < len(zero) < 25


def test_suggest_params_with_everything_fixed_asks_nothing() -> None:
    space = SearchSpaceConfig(discard_percent=3.0, lr=1e-3, lam=0.2, margin=0.1, margin_weight=0.0, loss=["bce"])
    trial = optuna.trial.FixedTrial({}, number=0)
    assert suggest_params(space, trial) == {
        "discard_percent": 3.0,
        "lr": 1e-3,
        "lam": 0.2,
        "margin": 0.1,
        "margin_weight": 0.0,
        "loss": "bce",
    }


def test_reference_points_are_the_base_config_with_and_without_a_mask() -> None:
    base = PipelineConfig.model_validate(BASE)  # lr 0.01 is above the default range: clipped to 5e-3
    points = reference_points(SearchSpaceConfig.model_validate({"margin": 0.3}), base)
    common = {"lr": 5e-3, "lam": 0.5, "margin_weight": 0.1, "loss": "bce"}
    assert points == [common, common | {"discard_percent": 2.0}]
    searched = reference_points(SearchSpaceConfig(margin=0.3, no_mask="searched"), base)
    assert searched == [common | {"mask": False}, common | {"mask": True, "discard_percent": 2.0}]
    assert reference_points(SearchSpaceConfig(margin=0.3, no_mask="never"), base) == [points[1]]
    assert reference_points(SearchSpaceConfig(discard_percent=1.0), base) == []


def test_trial_config_applies_the_trial_parameters() -> None:
    params = {"discard_percent": 0.0, "loss": "sigmoid_f1", "lr": 1e-3, "lam": 0.1, "margin": 0.2, "margin_weight": 0.3}
    config = trial_config(PipelineConfig.model_validate(BASE), params, epochs=3)
    assert (config.train.lr, config.train.loss, config.train.epochs, config.student_loss) == (
        1e-3,
        "sigmoid_f1",
        3,
        "sigmoid_f1",
    )
    assert (config.thresholds.lam, config.thresholds.margin, config.thresholds.margin_weight) == (0.1, 0.2, 0.3)
    assert (config.flagging.percent, config.flagging.top_k) == (0.0, None)


# ---------------------------------------------------------------- results, best trial, curve


def _row(trial_id: str, p: float, objective: float | None, status: str = "completed") -> dict:
    return {
        "trial_id": trial_id,
        "status": status,
        "discard_percent": p,
        "objective": objective,
        "objective_std": 0.01,
        "objective_by_epoch": [0.1, objective or 0.0],
    }


def test_results_table_best_row_and_curve(tmp_path: Path) -> None:
    rows = [
        _row("zero", 0.0, 0.60),
        _row("good", 2.0, 0.70),
        _row("stopped", 5.0, 0.90, "stopped early"),  # higher, but ASHA stopped it: never the best
        _row("failed", 1.0, None, "error"),
        _row("many", 20.0, 0.50),
    ]
    assert best_row(rows)["trial_id"] == "good"
    table = write_results(rows, tmp_path)
    assert table["trial_id"].to_pylist() == ["stopped", "good", "zero", "many", "failed"]
    assert pq.read_table(tmp_path / "results.parquet").equals(table)
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and '"0.1;0.7"' in csv_lines[2]
    plot_curve(rows, tmp_path / "curve.png", "map")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert best_row([_row("failed", 1.0, None, "error")]) is None


# ---------------------------------------------------------------- validation macro-F1 of the adaptive thresholds


class _Identity(nn.Module):
    """Logits = 4 x the first C features, embedding = the features (a fixed 'model' for threshold tests)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, features: torch.Tensor) -> TaggerOutput:
        return TaggerOutput(self.scale * features[:, : self.classes], features)


def _split(rng: np.random.Generator, n: int, classes: int, informative: bool) -> SplitData:
    targets = (rng.random((n, classes)) < 0.3).astype(np.float32)
    signal_source = targets if informative else rng.permutation(targets)
    features = np.concatenate([2 * signal_source - 1, rng.normal(size=(n, 4))], axis=1).astype(np.float32)
    features[:, :classes] += rng.normal(scale=0.5, size=(n, classes))
    zeros = np.zeros_like(targets)
    return SplitData([f"c{i}" for i in range(n)], features, targets, zeros, zeros)


@pytest.mark.parametrize("fit_split", ["val", "train"])
def test_validation_macro_f1_is_high_for_an_informative_model_and_low_for_noise(fit_split: str) -> None:
    rng = np.random.default_rng(0)
    config = PipelineConfig.model_validate(BASE | {"thresholds": {"fit_split": fit_split, "epochs": 100}})
    model = _Identity(3).eval()
    train = _split(rng, 120, 3, informative=True)
    good = validation_macro_f1(model, train, _split(rng, 80, 3, informative=True), config)
    noise = validation_macro_f1(model, train, _split(rng, 80, 3, informative=False), config)
    assert good > 0.85 and noise < 0.6


# ---------------------------------------------------------------- in-process flags (a trial's own discard %)


def _scores_dir(tmp_path: Path, vocabulary: LabelVocabulary) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    n, c = 50, len(vocabulary)
    positives = rng.random((n, c)) < 0.3
    explicit = ~positives & (rng.random((n, c)) < 0.1)
    scores = rng.normal(size=(n, c)).astype(np.float32)
    scores[7] = np.nan  # a clip that failed to score: its row carries an error and is skipped
    names = np.array(vocabulary.names)
    table = pa.table(
        {
            "row_index": np.arange(n, dtype=np.int64),
            "clip_id": [f"clip{i}" for i in range(n)],
            "labels": [list(names[row]) for row in positives],
            "explicit_negatives": [list(names[row]) for row in explicit],
            "removed_labels": [[] for _ in range(n)],
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), c),
            "error": [("decode failed" if i == 7 else None) for i in range(n)],
        }
    )
    directory = tmp_path / "scores"
    directory.mkdir()
    pq.write_table(table.slice(0, 20), directory / "part-0.parquet")
    pq.write_table(table.slice(20), directory / "part-1.parquet")
    keep = np.arange(n) != 7
    return directory, scores[keep], positives[keep], explicit[keep]


@pytest.mark.parametrize("keep_no_mask", [True, False])
def test_asha_stops_the_no_mask_reference_only_when_not_kept(keep_no_mask: bool) -> None:
    from ray.tune.schedulers import TrialScheduler

    from raymlc.distributed.sweep import KeepNoMaskASHA

    scheduler = KeepNoMaskASHA(
        keep_no_mask, time_attr="epoch", metric="objective", mode="max", max_t=4, grace_period=1, reduction_factor=2
    )
    results = {1.0: 0.5, 2.0: 0.9, 0.0: 0.1, 3.0: 0.05}  # discard % -> objective at epoch 1 (the first rung)
    decisions = {}
    for percent, objective in results.items():
        trial = SimpleNamespace(trial_id=f"p{percent}", config={"discard_percent": percent})
        scheduler.on_trial_add(None, trial)
        decisions[percent] = scheduler.on_trial_result(None, trial, {"epoch": 1, "objective": objective})

    no_mask = TrialScheduler.CONTINUE if keep_no_mask else TrialScheduler.STOP
    assert decisions == {1.0: "CONTINUE", 2.0: "CONTINUE", 0.0: no_mask, 3.0: "STOP"}


def test_local_flags_match_a_brute_force_on_the_whole_matrix(tmp_path: Path) -> None:
    vocabulary = LabelVocabulary(["a", "b", "c"])
    directory, scores, positives, explicit = _scores_dir(tmp_path, vocabulary)
    result = select_flags_local(directory, vocabulary, FlaggingConfig(percent=10.0))
    rows = np.flatnonzero(np.arange(50) != 7)  # the scored rows: the failed clip 7 is never a candidate
    expected = brute_force_flags(rows, scores, positives, explicit, percent=10)
    assert sum(len(r) for r in expected) > 3  # every class gets some flags
    np.testing.assert_array_equal(result.counts, [len(r) for r in expected])
    for c in range(3):
        np.testing.assert_array_equal(result.class_rows(c), expected[c])
        np.testing.assert_array_equal(result.class_scores(c), scores[np.searchsorted(rows, expected[c]), c])


# ---------------------------------------------------------------- entry points


def test_job_entry_point_help_and_bad_config(tmp_path: Path) -> None:
    python = sys.executable
    done = subprocess.run([python, "jobs/sweep.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--config" in done.stdout and "--output" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": BASE, "num_trials": 0}))
    done = subprocess.run(
        [python, "jobs/sweep.py", "--config", str(bad), "--output", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "bad.yaml: invalid config" in done.stderr and "num_trials" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_sweep_help_and_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raymlc.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--help"])
    assert exited.value.code == 0 and "--num-trials" in capsys.readouterr().out
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"base": BASE, "epochs": 4, "asha": {"grace_period": 2}}))
    command = ["sweep", "--config", str(config), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        main([*command, "--seeds", "0"])
    assert exited.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    assert main([*command, "--epochs", "1"]) == 2
    assert "asha.grace_period (2) must be below the trial epochs (1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- end to end: kill the driver, rerun


def _trial_status(tune_dir: Path) -> dict[str, str]:
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    trials = [json.loads(entry[0]) for entry in data["trial_data"]]
    return {trial["trial_id"]: trial["status"] for trial in trials}


def _sweep_command(config: Path, output: Path) -> list[str]:
    return [sys.executable, "jobs/sweep.py", "--config", str(config), "--output", str(output)]


def _run_until_a_trial_finished(command: list[str], tune_dir: Path, log: Path) -> dict[str, str]:
    """Start the sweep in its own session, SIGKILL its driver once a finished trial is on disk, then end
    what is left of that session (the driver's local Ray); returns the trial states at the kill."""
    environment = os.environ | {"RAY_AUTH_MODE": "disabled"}
    environment.pop("RAY_ADDRESS", None)
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 1200  # generous: the machine may be shared
        while "TERMINATED" not in (status := _trial_status(tune_dir)).values():
            assert driver.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # this test's own session only
    return status


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sweep_resumes_after_the_driver_is_killed(tmp_path: Path) -> None:
    config = write_tiny_sweep(tmp_path, num_trials=3, epochs=2)
    output = tmp_path / "sweep"
    command = _sweep_command(config, output)
    status = _run_until_a_trial_finished(command, output / "tune", tmp_path / "first.log")
    finished = [trial for trial, state in status.items() if state == "TERMINATED"]
    assert finished and len(finished) < 3, status

    def checkpoints(trial: str) -> list[str]:
        return sorted(path.name for path in (output / "trials" / trial).glob("checkpoint_*"))

    before = {trial: checkpoints(trial) for trial in finished}
    teacher_marker = (output / ".done-scores").stat().st_mtime_ns

    environment = os.environ | {"RAY_AUTH_MODE": "disabled"}
    environment.pop("RAY_ADDRESS", None)
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "tune: resuming" in rerun.stdout and "teacher: already trained" in rerun.stdout

    # Finished trials were kept, not rerun; every trial has now finished (completed or stopped by ASHA).
    assert {trial: checkpoints(trial) for trial in finished} == before
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert len(results) == 3 and {row["status"] for row in results} <= {"completed", "stopped early"}
    assert set(_trial_status(output / "tune").values()) == {"TERMINATED"}

    # The teacher was scored once: across both runs, and every trial used the same scores.
    assert (output / ".done-scores").stat().st_mtime_ns == teacher_marker
    summary = json.loads((output / "summary.json").read_text())
    assert summary["teacher_scores_used_by_trials"] == [summary["teacher_scores"]]
    assert {row["teacher_scores"] for row in results} == {summary["teacher_scores"]}

    # p = 0 (no mask) was evaluated first, beside the base config's p = 5 %; the outputs exist.
    assert 0.0 in {row["discard_percent"] for row in results}
    assert 5.0 in {row["discard_percent"] for row in results}
    best = summary["best"]
    assert best["status"] == "completed" and best["objective"] == max(
        row["objective"] for row in results if row["status"] == "completed"
    )
    # Each masked trial saved its flags (a FlagResult) beside its checkpoints: the brute-force top p % of the
    # teacher's scores, as many as the trial reported.
    names = LabelVocabulary.from_table(pq.read_table(tmp_path / "demo" / "manifest.parquet")).names
    teacher_scores = pq.read_table(output / "scores")
    for row in results:
        path = output / "trials" / f"{row['trial_id']}-flags.parquet"
        if row["discard_percent"] == 0:
            assert not path.exists() and row["flags"] == 0
            continue
        saved = load_flags(str(path))
        assert int(saved.counts.sum()) == row["flags"]
        if row["discard_percent"] == 5.0:
            for c, expected in enumerate(scores_table_flags(teacher_scores, names, 5)):
                np.testing.assert_array_equal(saved.class_rows(c), expected, err_msg=names[c])
    best_config = load_config(output / "best_config.yaml")
    assert best_config.flagging.percent == best["discard_percent"] and best_config.train.epochs == 2
    from raymlc.bundle import load_bundle

    tagger = load_bundle(str(output / "best_bundle"))
    assert (
        tagger.vocabulary.names
        == LabelVocabulary.from_table(pq.read_table(tmp_path / "demo" / "manifest.parquet")).names
    )
    assert (output / "curve.png").stat().st_size > 0 and (output / "results.csv").exists()
