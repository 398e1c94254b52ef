import pytest
import torch

from raymlc.config import FrontEndConfig, ModelConfig
from raymlc.features import LogMel
from raymlc.models import AudioCNN, FeatureMLP, build_model, count_parameters, forward_flops

FRONTEND = FrontEndConfig(window_seconds=1.0)


def test_logmel_shape_and_per_clip_independence() -> None:
    logmel = LogMel(FRONTEND).eval()
    waves = torch.randn(3, 16000)
    waves[1] *= 0.01  # a much quieter clip in the same batch
    batch = logmel(waves)
    assert batch.shape == (3, 1, 64, logmel.frames(16000))
    alone = logmel(waves[1:2])
    torch.testing.assert_close(batch[1:2], alone)


def test_spec_augment_only_in_training() -> None:
    torch.manual_seed(0)
    logmel = LogMel(FRONTEND)
    waves = torch.randn(2, 16000)
    logmel.eval()
    torch.testing.assert_close(logmel(waves), logmel(waves))
    logmel.train()
    masked = logmel(waves)
    # SpecAugment writes zeros (the mask value) into whole rows/columns of the normalized log-mel.
    assert (masked == 0).sum() > 0


def test_cnn_outputs_logits_and_embedding() -> None:
    model = AudioCNN(FRONTEND, ModelConfig(embedding_dim=48), n_classes=7).eval()
    output = model(torch.randn(4, 16000))
    assert output.logits.shape == (4, 7)
    assert output.embedding.shape == (4, 48)
    torch.testing.assert_close(output.logits, model.head(output.embedding))


def test_mlp_standardization_and_outputs() -> None:
    features = torch.randn(50, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 0.0]) + 7.0
    model = FeatureMLP(5, ModelConfig(kind="mlp", hidden=[16], embedding_dim=8), n_classes=3).eval()
    model.set_standardization(features)
    standardized = (features - model.feature_mean) / model.feature_std
    torch.testing.assert_close(standardized[:, :4].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized[:, :4].std(0), torch.ones(4), atol=1e-5, rtol=0)
    assert torch.isfinite(standardized[:, 4]).all()  # constant column: std 1, not 0
    output = model(features)
    assert output.logits.shape == (50, 3) and output.embedding.shape == (50, 8)


def test_build_model_requires_feature_dim_for_mlp() -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        build_model(ModelConfig(kind="mlp"), FRONTEND, 3)


def test_flops_counted_for_conv_and_linear_layers() -> None:
    model = build_model(ModelConfig(channels=[4], embedding_dim=8), FRONTEND, 2)
    flops = forward_flops(model, torch.randn(1, 16000))
    # Counted: the mel filterbank matmul, the 3x3 conv (1 -> 4 channels) and the two linear layers.
    frames = model.frontend.frames(16000)
    mel = 2 * frames * (FRONTEND.n_fft // 2 + 1) * FRONTEND.n_mels
    conv = 2 * 9 * 4 * FRONTEND.n_mels * frames
    linear = 2 * (4 * 8) + 2 * (8 * 2)
    assert flops == mel + conv + linear
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
