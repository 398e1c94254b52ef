"""Adaptive thresholds: θ formula, IDF, KNN (brute force, self-exclusion, bank cap), loss, fit, no leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymlc.bundle import load_bundle
from raymlc.config import TaggerConfig, ThresholdConfig
from raymlc.data import normalize_manifest
from raymlc.data.dataset import SplitData
from raymlc.models import FeatureMLP
from raymlc.thresholds import (
    AdaptiveThresholds,
    MemoryBank,
    adaptive_threshold_loss,
    fit_tagger_thresholds,
    fit_thresholds,
    idf,
    thresholds_for,
)
from raymlc.training import BUNDLE, train_local


def knn_reference(bank: MemoryBank, queries: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Brute force in float64: cosine to every bank clip, k best (excluded ones skipped), max(cos, 0) weights."""
    stored = bank.embeddings.astype(np.float64)  # unit norm up to float16 rounding, used as stored
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = np.zeros((len(queries), bank.n_classes))
    for i, query in enumerate(unit):
        candidates = [j for j in range(len(bank)) if exclude is None or bank.ids[j] != exclude[i]]
        cosines = stored[candidates] @ query
        best = np.argsort(-cosines)[:k]
        weights = np.maximum(cosines[best], 0)
        labels = bank.targets[candidates][best]
        out[i] = weights @ labels / weights.sum() if weights.sum() > 0 else 0.0
    return out


def test_idf_formula() -> None:
    targets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(idf(targets), np.log(4 / (1 + np.array([3, 1, 0]))), rtol=1e-6)


def test_theta_formula_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    train_idf = rng.uniform(0, 3, 5).astype(np.float32)
    module = AdaptiveThresholds(train_idf, lam=0.3, k=4)
    alpha, beta, bias = (rng.normal(size=5).astype(np.float32) for _ in range(3))
    module = AdaptiveThresholds.from_arrays(module.to_arrays() | {"alpha": alpha, "beta": beta, "bias": bias})
    knn = rng.uniform(size=(7, 5)).astype(np.float32)
    expected = 0.3 * alpha * train_idf + 0.7 * beta * knn + bias
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(knn)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 6))
    bank = MemoryBank.build(train, rng.random((40, 4)) < 0.3)
    queries = rng.normal(size=(9, 6))
    for k in (1, 5, 40, 100):
        np.testing.assert_allclose(bank.knn_signal(queries, k), knn_reference(bank, queries, k), atol=1e-5)
    own = np.arange(40)
    np.testing.assert_allclose(bank.knn_signal(train, 5, exclude=own), knn_reference(bank, train, 5, own), atol=1e-5)


def test_self_exclusion_never_counts_an_example_own_label() -> None:
    # Each clip's nearest neighbour is itself (cos 1); the others are close but not identical, and each
    # clip is the only carrier of its label.
    embeddings = np.eye(5) + 0.2
    bank = MemoryBank.build(embeddings, np.eye(5))
    with_self = bank.knn_signal(embeddings, k=1)
    np.testing.assert_array_equal(with_self, np.eye(5))
    excluded = bank.knn_signal(embeddings, k=3, exclude=np.arange(5))
    np.testing.assert_array_equal(np.diag(excluded), np.zeros(5))
    assert (excluded.sum(axis=1) > 0.99).all()


def test_bank_cap_is_a_seeded_uniform_sample_in_row_order() -> None:
    rng = np.random.default_rng(2)
    embeddings, targets = rng.normal(size=(100, 8)) * 5, rng.random((100, 3)) < 0.5
    bank = MemoryBank.build(embeddings, targets, max_size=30, seed=7)
    assert len(bank) == 30 and len(set(bank.ids)) == 30 and (np.diff(bank.ids) > 0).all()
    np.testing.assert_array_equal(bank.ids, MemoryBank.build(embeddings, targets, 30, seed=7).ids)
    assert bank.embeddings.dtype == np.float16 and bank.targets.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(bank.embeddings.astype(np.float32), axis=1), 1, atol=1e-3)
    np.testing.assert_array_equal(bank.targets, targets[bank.ids])
    assert len(MemoryBank.build(embeddings, targets, max_size=500)) == 100


def test_loss_matches_direct_computation_and_ignores_masked_entries() -> None:
    rng = np.random.default_rng(3)
    z, theta = rng.normal(size=(6, 4)) * 2, rng.normal(size=(6, 4))
    y, mask = (rng.random((6, 4)) < 0.4).astype(float), rng.random((6, 4)) < 0.7
    d = (z - theta)[mask]
    bce = np.maximum(d, 0) - d * y[mask] + np.log1p(np.exp(-np.abs(d)))
    expected = bce.mean() + 0.3 * np.maximum(0.5 - np.abs(d), 0).mean()
    logits = torch.tensor(z, requires_grad=True)
    logits_nan = logits.detach().clone().masked_fill(~torch.from_numpy(mask), float("nan")).requires_grad_()
    args = (torch.tensor(theta), torch.tensor(y), torch.from_numpy(mask))
    loss = adaptive_threshold_loss(logits, *args, margin=0.5, margin_weight=0.3)
    loss_nan = adaptive_threshold_loss(logits_nan, *args, margin=0.5, margin_weight=0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert loss_nan.item() == pytest.approx(expected, rel=1e-9)
    loss_nan.backward()
    assert torch.isfinite(logits_nan.grad).all() and (logits_nan.grad[~torch.from_numpy(mask)] == 0).all()


def test_fit_recovers_a_shifted_decision_boundary() -> None:
    # P(y = 1 | z) = sigmoid(z − 2): the calibrated threshold is the constant 2 for every label.
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, size=(1500, 3)).astype(np.float32)
    targets = (rng.random(logits.shape) < 1 / (1 + np.exp(-(logits - 2)))).astype(np.float32)
    embeddings = rng.random((1500, 4)).astype(np.float32)
    bank = MemoryBank.build(embeddings, targets)
    config = ThresholdConfig(lam=1.0, margin_weight=0.0, epochs=120, lr=0.1)
    module = fit_thresholds(logits, embeddings, targets, bank, idf(targets), config, exclude=np.arange(1500))
    theta = thresholds_for(module, bank, embeddings[:10])
    np.testing.assert_allclose(theta, 2.0, atol=0.3)


def test_fit_ignores_masked_entries() -> None:
    rng = np.random.default_rng(5)
    logits, embeddings = rng.normal(size=(50, 3)), rng.random((50, 4))
    targets = (rng.random((50, 3)) < 0.4).astype(np.float32)
    mask = np.ones_like(targets)
    mask[:, 1] = 0
    bank, config = MemoryBank.build(embeddings, targets), ThresholdConfig(epochs=20)
    corrupted = targets.copy()
    corrupted[:, 1] = 1 - corrupted[:, 1]
    fits = [
        fit_thresholds(logits, embeddings, y, bank, idf(targets), config, mask=mask).to_arrays()
        for y in (targets, corrupted)
    ]
    for name in ("alpha", "beta", "bias"):
        np.testing.assert_array_equal(fits[0][name], fits[1][name])
    assert fits[0]["bias"][1] == 0  # a fully masked label keeps its initial parameters


# ---------------------------------------------------------------- no leak through the test labels


def write_manifest(path: Path, test_labels: str) -> str:
    """Label l is mostly present iff feature l > 0; `test_labels`: "keep", "shuffle" or "remove"."""
    rng = np.random.default_rng(0)
    n, dim = 160, 6
    features = rng.normal(size=(n, dim)).astype(np.float32)
    names = ["a", "b", "c"]
    labels = [[names[k] for k in range(3) if row[k] + 0.3 * rng.normal() > 0] for row in features]
    splits = ["train"] * 100 + ["val"] * 30 + ["test"] * 30
    test = slice(130, 160)
    if test_labels == "shuffle":
        labels[test] = [labels[130 + i] for i in np.random.default_rng(1).permutation(30)]
    elif test_labels == "remove":
        labels[test] = [[] for _ in range(30)]
    table = pa.table(
        {
            "clip_id": [f"c{i}" for i in range(n)],
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), dim),
            "labels": labels,
            "split": splits,
        }
    )
    pq.write_table(normalize_manifest(table), path)
    return str(path)


@pytest.mark.parametrize("fit_split", ["val", "train"])
def test_test_labels_never_reach_predictions_or_thresholds(tmp_path: Path, fit_split: str) -> None:
    outputs = []
    for variant in ("keep", "shuffle", "remove"):
        config = TaggerConfig.model_validate(
            {
                "data": {"manifest": write_manifest(tmp_path / f"{variant}.parquet", variant)},
                "model": {"kind": "mlp", "hidden": [16], "embedding_dim": 8},
                "train": {"epochs": 3, "batch_size": 16},
                "thresholds": {"fit_split": fit_split, "k": 5, "epochs": 30},
            }
        )
        torch.manual_seed(0)
        train_local(config, tmp_path / variant, log=lambda _: None)
        tagger = load_bundle(str(tmp_path / variant / BUNDLE))
        assert tagger.metadata["data"]["threshold_fit_split"] == fit_split
        features = pq.read_table(tmp_path / "keep.parquet").column("features").to_pylist()[130:]
        outputs.append(tagger.tag_features(np.array(features, np.float32)))
    for other in outputs[1:]:
        np.testing.assert_array_equal(other.logits, outputs[0].logits)
        np.testing.assert_array_equal(other.thresholds, outputs[0].thresholds)
        np.testing.assert_array_equal(other.present, outputs[0].present)
    assert outputs[0].present.any() and not outputs[0].present.all()


def test_val_fit_falls_back_to_train_without_a_val_split() -> None:
    rng = np.random.default_rng(6)
    features, targets = rng.normal(size=(20, 4)).astype(np.float32), (rng.random((20, 2)) < 0.5)
    train = SplitData([f"c{i}" for i in range(20)], features, targets.astype(np.float32), targets, targets)
    empty = SplitData([], features[:0], targets[:0].astype(np.float32), targets[:0], targets[:0])
    config = TaggerConfig.model_validate(
        {
            "data": {"manifest": "unused"},
            "model": {"kind": "mlp", "hidden": [8], "embedding_dim": 4},
            "thresholds": {"fit_split": "val", "epochs": 5, "bank_size": 15},
        }
    )
    model = FeatureMLP(4, config.model, 2)
    fitted = fit_tagger_thresholds(model, train, empty, config)
    assert fitted.fit_split == "train" and len(fitted.bank) == 15
