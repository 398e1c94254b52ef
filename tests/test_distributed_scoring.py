"""Ray Data scoring (`score_manifest`) gives the local scorer's scores, on feature rows and on audio clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymlc.checkpoint import save_checkpoint
from raymlc.config import DemoConfig, ScoringConfig, TaggerConfig
from raymlc.data import LabelVocabulary, normalize_manifest
from raymlc.data.audio import decode_clips
from raymlc.data.demo import make_demo
from raymlc.distributed.scoring import read_rejects, score_manifest
from raymlc.models import build_model
from raymlc.scoring import score_batch

pytestmark = pytest.mark.slow


def _checkpoint(
    path: Path, config: TaggerConfig, vocabulary: LabelVocabulary, feature_dim: int | None
) -> torch.nn.Module:
    """An untrained model with random weights (and, for the MLP, non-trivial standardization), saved."""
    torch.manual_seed(0)
    model = build_model(config.model, config.frontend, len(vocabulary), feature_dim).eval()
    if feature_dim is not None:
        model.set_standardization(torch.randn(50, feature_dim) * 3 + 1)
    save_checkpoint(path, model, config, vocabulary, feature_dim)
    return model


def _scored(output: Path) -> pa.Table:
    return pq.read_table(output).sort_by("row_index")


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.stack(column.to_numpy(zero_copy_only=False))


def test_feature_rows_scored_on_ray_match_local_scoring(ray_session, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n, dim = 70, 6
    features = rng.normal(size=(n, dim)).astype(np.float32)
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": [f"row{i}" for i in range(n)],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), dim),
                "labels": [["a"] if row[0] > 0 else ["b", "c"] for row in features],
                "split": ["train"] * n,
            }
        )
    )
    vocabulary = LabelVocabulary.from_table(table)
    config = TaggerConfig.model_validate(
        {"data": {"manifest": "unused"}, "model": {"kind": "mlp", "hidden": [16], "embedding_dim": 8}}
    )
    model = _checkpoint(tmp_path / "checkpoint.pt", config, vocabulary, dim)
    scoring = ScoringConfig(batch_size=16, min_actors=1, max_actors=2, write_embeddings=True)

    scored = _scored(score_manifest(table, str(tmp_path / "checkpoint.pt"), tmp_path / "scores", scoring))

    logits, embeddings = score_batch(model, features, None)
    assert scored["row_index"].to_pylist() == list(range(n))
    assert scored["clip_id"].to_pylist() == table["clip_id"].to_pylist()
    assert scored["labels"].to_pylist() == table["labels"].to_pylist()
    assert scored["error"].null_count == n
    np.testing.assert_allclose(_matrix(scored["scores"]), torch.sigmoid(logits), atol=1e-6)
    np.testing.assert_allclose(_matrix(scored["embedding"]), embeddings, atol=1e-6)


def test_audio_clips_scored_on_ray_match_local_scoring_and_corrupt_clip_is_rejected(
    ray_session, tmp_path: Path
) -> None:
    manifest = make_demo(tmp_path / "demo", DemoConfig(n_train=20, n_val=2, n_test=2, clip_seconds=1.5, seed=5))
    table = pq.read_table(manifest)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC but not really")
    row = table.slice(3, 1).to_pylist()[0] | {"clip_id": "corrupt-clip", "audio": str(corrupt)}
    table = pa.concat_tables([table.slice(0, 3), pa.Table.from_pylist([row], schema=table.schema), table.slice(3)])
    vocabulary = LabelVocabulary.from_table(table)
    config = TaggerConfig.model_validate(
        {
            "data": {"manifest": str(manifest)},
            "frontend": {"window_seconds": 1.0, "n_mels": 32},
            "model": {"channels": [4, 8], "embedding_dim": 8},
        }
    )
    model = _checkpoint(tmp_path / "checkpoint.pt", config, vocabulary, None)
    scoring = ScoringConfig(batch_size=8, min_actors=1, max_actors=2)
    sample_rate = config.frontend.sample_rate

    output = score_manifest(table, str(tmp_path / "checkpoint.pt"), tmp_path / "scores", scoring)

    scored = _scored(output)
    assert scored["clip_id"].to_pylist() == table["clip_id"].to_pylist()
    assert "embedding" not in scored.column_names
    rejects = read_rejects(output).to_pylist()
    assert [(r["row_index"], r["clip_id"]) for r in rejects] == [(3, "corrupt-clip")] and rejects[0]["reason"]
    assert scored["scores"][3].as_py() is None
    waves, loaded, _ = decode_clips(table.to_pylist(), sample_rate=sample_rate)
    assert 3 not in loaded and len(loaded) == len(table) - 1
    logits, _ = score_batch(model, waves, config.window_samples)
    ray_scores = _matrix(scored["scores"].take(pa.array(loaded)))
    np.testing.assert_allclose(ray_scores, torch.sigmoid(logits), atol=1e-5)
