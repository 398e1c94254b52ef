"""Log-mel front end: raw waveforms in, normalized log-mel spectrograms out (an `nn.Module`)."""

from __future__ import annotations

import torch
from torch import nn
from torchaudio import transforms

from raymlc.config import FrontEndConfig


class LogMel(nn.Module):
    """Waveform [B, T] -> log-mel [B, 1, n_mels, frames], with SpecAugment masks in training mode only."""

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self.melspec = transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            power=2.0,
        )
        self.to_db = transforms.AmplitudeToDB(stype="power", top_db=config.top_db)
        # Learned per-mel-bin normalization (as in PANNs): no dataset statistics to carry around.
        self.norm = nn.BatchNorm2d(config.n_mels)
        self.freq_mask = transforms.FrequencyMasking(config.freq_mask) if config.freq_mask else nn.Identity()
        self.time_mask = transforms.TimeMasking(config.time_mask) if config.time_mask else nn.Identity()

    def frames(self, n_samples: int) -> int:
        """Number of spectrogram frames for `n_samples` samples (centered STFT)."""
        return n_samples // self.config.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # AmplitudeToDB's top_db clamps per batch; compute it per clip so a clip's features
        # never depend on the other clips in its batch (training, scoring and serving agree).
        logmel = self.to_db(self.melspec(waveform).unsqueeze(1) + 1e-10)
        logmel = logmel - logmel.amax(dim=(-2, -1), keepdim=True)
        logmel = self.norm(logmel.transpose(1, 2)).transpose(1, 2)
        if self.training:
            logmel = self.time_mask(self.freq_mask(logmel))
        return logmel
