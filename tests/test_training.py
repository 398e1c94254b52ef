import numpy as np
import pyarrow as pa
import pytest
import torch

from raymlc.config import DataConfig, FrontEndConfig, ModelConfig, TaggerConfig, TrainConfig
from raymlc.data import LabelVocabulary, ManifestError, normalize_manifest
from raymlc.data.audio import eval_windows
from raymlc.data.dataset import SplitData, load_split
from raymlc.data.stream import EpochPlan, MemoryClips
from raymlc.models import AudioCNN, FeatureMLP
from raymlc.scoring import evaluate, predict
from raymlc.training import fit

FEATURES = TaggerConfig(data=DataConfig(manifest="unused.parquet"), model=ModelConfig(kind="mlp"))
AUDIO = TaggerConfig(data=DataConfig(manifest="unused.parquet"))


def separable_table(n: int = 300, dim: int = 10, seed: int = 0) -> pa.Table:
    """Label l is present iff feature l > 0.3: learnable by an MLP."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    names = ["a", "b", "c"]
    labels = [[names[k] for k in range(3) if row[k] > 0.3] for row in features]
    splits = ["train"] * (n - 100) + ["val"] * 50 + ["test"] * 50
    return normalize_manifest(
        pa.table(
            {
                "clip_id": [f"c{i}" for i in range(n)],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), dim),
                "labels": labels,
                "split": splits,
            }
        )
    )


def mlp_data() -> tuple[LabelVocabulary, SplitData, SplitData, SplitData]:
    table = separable_table()
    vocabulary = LabelVocabulary.from_table(table)
    return vocabulary, *(load_split(table, vocabulary, s, FEATURES) for s in ("train", "val", "test"))


def test_mlp_learns_separable_labels() -> None:
    vocabulary, train, val, test = mlp_data()
    model = FeatureMLP(10, ModelConfig(kind="mlp", hidden=[32], embedding_dim=16, dropout=0.0), len(vocabulary))
    model.set_standardization(torch.from_numpy(train.inputs))
    config = TrainConfig(epochs=30, batch_size=32, lr=0.01)
    history = fit(model, MemoryClips(train, None), EpochPlan.of(config, len(train)), val, config, None)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert evaluate(model, test, 64, None)["map"] > 0.9


def test_masked_entries_do_not_train() -> None:
    vocabulary, train, _val, _ = mlp_data()
    model = FeatureMLP(10, ModelConfig(kind="mlp", hidden=[8], embedding_dim=8), len(vocabulary))
    head_before = model.head.weight.detach().clone()
    mask = np.ones_like(train.targets)
    mask[:, 0] = 0.0  # class "a" never counts in the loss
    config = TrainConfig(epochs=2, weight_decay=0.0)
    fit(model, MemoryClips(train, None, mask), EpochPlan.of(config, len(train)), None, config, None)
    torch.testing.assert_close(model.head.weight[0], head_before[0], rtol=0, atol=0)
    assert not torch.equal(model.head.weight[1], head_before[1])


def test_clean_label_source_adds_removed_labels() -> None:
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": ["x", "y"],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4, np.float32)), 2),
                "labels": [["a"], []],
                "removed_labels": [["b"], ["a"]],
            }
        )
    )
    vocabulary = LabelVocabulary(["a", "b"])
    observed = load_split(table, vocabulary, None, FEATURES, "observed")
    clean = load_split(table, vocabulary, None, FEATURES, "clean")
    np.testing.assert_array_equal(observed.targets, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(clean.targets, [[1, 1], [1, 0]])
    np.testing.assert_array_equal(clean.removed, [[0, 1], [1, 0]])


def test_predict_pools_max_over_windows() -> None:
    frontend = FrontEndConfig(window_seconds=0.5, n_mels=32)
    model = AudioCNN(frontend, ModelConfig(channels=[4, 8], embedding_dim=8), n_classes=2).eval()
    rng = np.random.default_rng(0)
    waves = [rng.normal(size=20000).astype(np.float32), rng.normal(size=3000).astype(np.float32)]
    data = SplitData(["long", "short"], waves, np.zeros((2, 2), np.float32), np.zeros((2, 2)), np.zeros((2, 2)))
    logits, embeddings = predict(model, data, batch_size=1, window_samples=8000)
    with torch.no_grad():
        windows = torch.from_numpy(eval_windows(waves[0], 8000))
        assert len(windows) == 3
        output = model(windows)
    np.testing.assert_allclose(logits[0], output.logits.amax(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embeddings[0], output.embedding.mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_split_needs_the_column_the_model_eats() -> None:
    audio = normalize_manifest(pa.table({"clip_id": ["a"], "audio": ["/nope.wav"], "labels": [[]]}))
    with pytest.raises(ManifestError, match="mlp model needs a manifest with a 'features' column"):
        load_split(audio, LabelVocabulary(["x"]), None, FEATURES)
    features = normalize_manifest(
        pa.table(
            {
                "clip_id": ["a"],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2, np.float32)), 2),
                "labels": [[]],
            }
        )
    )
    with pytest.raises(ManifestError, match="cnn model needs a manifest with a 'audio' column"):
        load_split(features, LabelVocabulary(["x"]), None, AUDIO)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu(precision: str) -> None:
    vocabulary, train, val, test = mlp_data()
    model = FeatureMLP(10, ModelConfig(kind="mlp", hidden=[32], embedding_dim=16, dropout=0.0), len(vocabulary))
    model.set_standardization(torch.from_numpy(train.inputs))
    config = TrainConfig(epochs=30, batch_size=32, lr=0.01, precision=precision)
    history = fit(model, MemoryClips(train, None), EpochPlan.of(config, len(train)), val, config, None)
    assert all(np.isfinite(r["train_loss"]) for r in history)
    assert evaluate(model, test, 64, None)["map"] > 0.9
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32
