"""Tagger bundle: round trip in a fresh process (bit for bit on CPU), pooling, the predict CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from raymlc.bundle import BundleError, Tagger, load_bundle, save_bundle
from raymlc.cli import main
from raymlc.config import PipelineConfig, TaggerConfig
from raymlc.data import LabelVocabulary
from raymlc.data.dataset import SplitData
from raymlc.models import build_model
from raymlc.scoring import predict
from raymlc.thresholds import AdaptiveThresholds, MemoryBank, idf

SAMPLE_RATE = 8000
# Training-side modules a bundle must load without (scoring, thresholds and the dataset code it may import).
TRAINING_CODE = ("raymlc.training", "raymlc.teacher_student", "raymlc.sweep", "raymlc.flagging", "raymlc.report")
LOAD_AND_TAG = f"""
import sys
import numpy as np
from raymlc.bundle import load_bundle

inputs = np.load(sys.argv[3])
audio = load_bundle(sys.argv[1]).tag_waveforms([inputs["wave0"], inputs["wave1"], inputs["wave2"]])
features = load_bundle(sys.argv[2]).tag_features(inputs["features"])
training_code = [name for name in sys.modules if name in {TRAINING_CODE!r} or name == "ray"
                 or name.startswith(("raymlc.distributed", "ray."))]
np.savez(sys.argv[4], **{{f"audio_{{k}}": v for k, v in vars(audio).items()}},
         **{{f"features_{{k}}": v for k, v in vars(features).items()}}, training_code=np.array(training_code, str))
"""


def make_tagger(kind: str, seed: int = 0, schema: type[TaggerConfig] = TaggerConfig) -> Tagger:
    """An untrained tiny tagger with random threshold parameters and a 12-clip memory bank."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = schema.model_validate(
        {
            "data": {"manifest": "unused.parquet"},
            "frontend": {
                "sample_rate": SAMPLE_RATE,
                "window_seconds": 0.25,
                "n_fft": 128,
                "win_length": 128,
                "hop_length": 64,
                "n_mels": 16,
            },
            "model": {"kind": kind, "channels": [4, 8], "hidden": [16], "embedding_dim": 8},
        }
    )
    vocabulary = LabelVocabulary(["bird", "car", "dog"])
    feature_dim = 5 if kind == "mlp" else None
    model = build_model(config.model, config.frontend, 3, feature_dim).eval()
    bank_targets = rng.random((12, 3)) < 0.4
    bank = MemoryBank.build(rng.random((12, 8)), bank_targets, max_size=10)
    thresholds = AdaptiveThresholds(idf(bank_targets), lam=0.4, k=3)
    with torch.no_grad():
        for parameter in (thresholds.alpha, thresholds.beta, thresholds.bias):
            parameter.copy_(torch.from_numpy(rng.normal(size=3).astype(np.float32)))
    metadata = {"feature_dim": feature_dim}
    return Tagger(model, config, vocabulary, thresholds, bank, metadata)


def save(tagger: Tagger, uri: str) -> None:
    save_bundle(
        uri,
        tagger.model,
        tagger.config,
        tagger.vocabulary,
        tagger.thresholds,
        tagger.bank,
        tagger.metadata["feature_dim"],
        data={"clips": {"train": 12}},
        metrics={"test": {"macro_f1": 0.5}},
    )


def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(0, 0.1, n).astype(np.float32) for n in (900, 2000, 5000)]


def test_round_trip_in_a_fresh_process_is_bit_for_bit(tmp_path: Path) -> None:
    # a pipeline config (with Ray sections) is saved as its TaggerConfig core
    audio, features = make_tagger("cnn"), make_tagger("mlp", seed=1, schema=PipelineConfig)
    save(audio, str(tmp_path / "audio"))
    save(features, (tmp_path / "features").as_uri())  # file:// URI through pyarrow.fs
    inputs = {f"wave{i}": w for i, w in enumerate(waves())}
    inputs["features"] = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = [str(tmp_path / "audio"), (tmp_path / "features").as_uri(), str(tmp_path / "inputs.npz")]
    subprocess.run([sys.executable, "-c", LOAD_AND_TAG, *script, str(tmp_path / "out.npz")], check=True)
    out = np.load(tmp_path / "out.npz")
    assert all(importlib.util.find_spec(name) for name in TRAINING_CODE)  # the names checked are real modules
    assert out["training_code"].tolist() == []  # loading and tagging import no training code and no Ray
    expected = {
        "audio": audio.tag_waveforms(waves()),
        "features": features.tag_features(inputs["features"]),
    }
    for prefix, result in expected.items():
        for key, value in vars(result).items():
            np.testing.assert_array_equal(out[f"{prefix}_{key}"], value, err_msg=f"{prefix}_{key}")
    assert expected["audio"].present.dtype == bool and expected["audio"].logits.shape == (3, 3)
    metadata = load_bundle(str(tmp_path / "audio")).metadata
    assert metadata["format"] == "raymlc-tagger-bundle" and metadata["created"]
    assert metadata["data"] == {"clips": {"train": 12}} and metadata["config"]["model"]["kind"] == "cnn"


def test_tag_waveforms_pools_windows_like_scoring_predict() -> None:
    tagger = make_tagger("cnn")
    clips = waves()
    data = SplitData(["a", "b", "c"], clips, np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3)))
    logits, embeddings = predict(tagger.model, data, batch_size=2, window_samples=tagger.config.window_samples)
    result = tagger.tag_waveforms(clips)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.embeddings, embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.present, result.logits > result.thresholds)
    assert tagger.tag_waveforms([]).logits.shape == (0, 3)


def test_load_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a tagger bundle"):
        load_bundle(str(tmp_path))


def test_predict_cli_json_lines_and_unreadable_file(tmp_path: Path, capsys) -> None:
    tagger = make_tagger("cnn")
    save(tagger, str(tmp_path / "bundle"))
    paths = []
    for i, wave in enumerate(waves()[:2]):
        paths.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(paths[-1], wave, SAMPLE_RATE, subtype="FLOAT")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    argv = ["predict", str(tmp_path / "bundle"), paths[0], str(broken), paths[1], "--json"]
    assert main([*argv, "--batch-size", "2"]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["file"] for line in lines] == [paths[0], str(broken), paths[1]]
    assert "error" in lines[1] and str(broken) in captured.err
    expected = tagger.tag_waveforms([sf.read(p, dtype="float32")[0] for p in paths])
    for row, line in enumerate([lines[0], lines[2]]):
        assert [label["name"] for label in line["labels"]] == ["bird", "car", "dog"]
        assert set(line["labels"][0]) == {"name", "score", "threshold", "present"}
        np.testing.assert_allclose([x["score"] for x in line["labels"]], expected.logits[row], rtol=1e-5)
        np.testing.assert_allclose([x["threshold"] for x in line["labels"]], expected.thresholds[row])
        assert [x["present"] for x in line["labels"]] == expected.present[row].tolist()
    assert main(["predict", str(tmp_path / "bundle"), *paths]) == 0
    text = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in text] == paths
