"""Multi-label mixtures of the real Free Spoken Digit Dataset (FSDD) recordings, with incomplete train labels.

Each clip sums `min_digits`..`max_digits` recordings of distinct digits (label names "0".."9"), each at a
random onset (overlaps allowed) and a random level in [`min_gain_db`, 0] dB relative to unit RMS, over an
optional white noise floor, then peak-normalized. Train, val and test draw recordings only from their own
speakers. In the train split a `drop_fraction` of the positives moves from `labels` to `removed_labels`:

* `removal="structured"`: an event's drop score grows with its level deficit below the loudest digit of its
  clip, so the quieter digit of a mixture goes unlabelled far more often (single-digit clips rarely lose theirs);
* `removal="random"`: uniformly over the positives.

The drop probabilities are calibrated and sampled by `raymlc.data.synthetic`, so the removed fraction is
`drop_fraction` to within one label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from raymlc.config import ConfigError, MixtureConfig
from raymlc.data.audio import decode_audio
from raymlc.data.synthetic import (
    LABEL_STREAM,
    SPLITS,
    explicit_negatives,
    overlaps,
    removed_labels,
    render_splits,
    write_dataset,
)

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
RECORDING_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<take>\d+)\.wav$")
PEAK = 0.9
# Structured removal score per 10 dB below the loudest digit of the clip.
DEFICIT_SLOPE = 5.0
_REFERENCE_RMS = 0.1

Pools = dict[str, dict[str, list[Path]]]  # split -> digit -> recordings


@dataclass(frozen=True)
class Event:
    """One digit of a clip: its source recording (file name), placement and level."""

    label: str
    source: str
    speaker: str
    onset_s: float
    duration_s: float
    gain_db: float
    overlap: float


def recording_pools(recordings_dir: str | Path, config: MixtureConfig) -> Pools:
    """The recordings of each split's speakers by digit; errors name the directory and what is missing."""
    directory = Path(recordings_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: recordings directory not found")
    parsed = [(RECORDING_NAME.match(path.name), path) for path in sorted(directory.iterdir())]
    found = [(match["digit"], match["speaker"], path) for match, path in parsed if match]
    if not found:
        raise FileNotFoundError(f"{directory}: no recordings named {{digit}}_{{speaker}}_{{take}}.wav")
    speakers = {"train": config.train_speakers, "val": config.val_speakers, "test": config.test_speakers}
    pools: Pools = {}
    for split in SPLITS:
        pools[split] = {d: [p for d_, s, p in found if d_ == d and s in speakers[split]] for d in DIGITS}
        empty = [d for d in DIGITS if not pools[split][d]]
        if empty:
            raise ConfigError(
                f"{directory}: {split}_speakers {speakers[split]} have no recordings of digits {empty} "
                f"(speakers present: {sorted({s for _, s, _ in found})})"
            )
    return pools


# ---------------------------------------------------------------- clips


def _make_clip(config: MixtureConfig, pools: dict[str, list[Path]], key: tuple[int, int], path: Path) -> list[Event]:
    """Draw, mix and write one clip; its own seed stream (`key` = split, index) makes it independent."""
    rng = np.random.default_rng([config.seed, *key])
    sr, n = config.sample_rate, round(config.clip_seconds * config.sample_rate)
    count = int(rng.integers(config.min_digits, config.max_digits + 1))
    digits = [DIGITS[d] for d in np.sort(rng.choice(len(DIGITS), count, replace=False))]
    sources = [pools[d][int(rng.integers(len(pools[d])))] for d in digits]
    gains = rng.uniform(config.min_gain_db, 0.0, count).round(2)
    mix = np.zeros(n)
    if config.noise_db is not None:
        mix += rng.standard_normal(n) * _REFERENCE_RMS * 10 ** (config.noise_db / 20)
    onsets, durations = [], []
    for source, gain in zip(sources, gains, strict=True):
        wave = decode_audio(source, clip_id=source.name, sample_rate=sr)[:n]  # longer than the clip: its start
        wave = wave / max(float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))), 1e-8)
        start = int(rng.integers(0, n - len(wave) + 1))
        mix[start : start + len(wave)] += wave * _REFERENCE_RMS * 10 ** (gain / 20)
        onsets.append(start / sr)
        durations.append(len(wave) / sr)
    sf.write(path, mix * (PEAK / max(float(np.abs(mix).max()), 1e-8)), sr, subtype="PCM_16")
    shared = overlaps(np.array(onsets), np.array(durations))
    rows = zip(digits, sources, onsets, durations, gains, shared, strict=True)
    return [
        Event(digit, source.name, source.stem.split("_")[1], round(onset, 4), round(duration, 4), float(g), round(o, 4))
        for digit, source, onset, duration, g, o in rows
    ]


# ---------------------------------------------------------------- incomplete labels


def _drop_scores(clips: list[list[Event]], removal: str) -> np.ndarray:
    """Per event (clips flattened): 0 for random removal, else DEFICIT_SLOPE per 10 dB below the clip's loudest."""
    if removal == "random":
        return np.zeros(sum(len(events) for events in clips))
    deficits = [max(e.gain_db for e in events) - event.gain_db for events in clips for event in events]
    return DEFICIT_SLOPE * np.array(deficits) / 10


def _split_rows(
    split: str, clips: list[list[Event]], paths: list[Path], config: MixtureConfig, rng: np.random.Generator
) -> list[dict]:
    train = split == "train"
    if train:
        removed = removed_labels(clips, _drop_scores(clips, config.removal), config.drop_fraction, rng)
    else:
        removed = [set() for _ in clips]
    rows = []
    for path, events, dropped in zip(paths, clips, removed, strict=True):
        rows.append(
            {
                "clip_id": path.stem,
                "audio": str(path),
                "labels": [e.label for e in events if e.label not in dropped],
                "explicit_negatives": (
                    explicit_negatives({e.label for e in events}, DIGITS, config.explicit_negative_rate, rng)
                    if train
                    else []
                ),
                "removed_labels": [e.label for e in events if e.label in dropped],
                "split": split,
                "sources": [e.source for e in events],
                "n_events": len(events),
                "events": json.dumps([asdict(e) for e in events]),
            }
        )
    return rows


# ---------------------------------------------------------------- the dataset


def make_fsdd_mixtures(
    recordings_dir: str | Path,
    output_dir: str | Path,
    config: MixtureConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the FSDD mixtures under `output_dir` and return the path of its manifest.

    Writes `audio/{split}/{clip_id}.{flac|wav}` (16-bit PCM), `classes.json` and `manifest.parquet`, whose
    `audio` column holds absolute paths, `sources` the recordings mixed into each clip and `events` the JSON
    list of each clip's digits (label, source, speaker, onset_s, duration_s, gain_db, overlap). The same
    recordings and config give the same files, byte for byte.
    """
    config = config or MixtureConfig()
    pools = recording_pools(recordings_dir, config)
    output_dir = Path(output_dir).resolve()
    sizes = (config.n_train, config.n_val, config.n_test)

    def render(split_index: int, index: int, path: Path) -> list[Event]:
        return _make_clip(config, pools[SPLITS[split_index]], (split_index, index), path)

    paths, clips = render_splits(output_dir, sizes, config.audio_format, render, progress)
    rng = np.random.default_rng([config.seed, LABEL_STREAM])
    rows = [row for split in SPLITS for row in _split_rows(split, clips[split], paths[split], config, rng)]
    return write_dataset(output_dir, rows, DIGITS)
