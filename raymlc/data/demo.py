"""The built-in demo dataset: seeded synthetic polyphonic sound events with incomplete train labels.

Each clip mixes `min_events`..`max_events` events of distinct classes (random onsets, durations 0.3–1.5 s,
levels −30..0 dB) over coloured background noise. In the train split a `drop_fraction` of the positive
(clip, class) pairs is moved from `labels` to `removed_labels`:

* `removal="structured"` (like AudioSet's missed nominations): faint and overlapped events are dropped far
  more often than loud, isolated ones;
* `removal="random"`: each class has its own drop rate (missing at random given the class).

Drop probabilities are `sigmoid(score - b)` with the offset `b` found by bisection so they average to
`drop_fraction`; systematic sampling then removes exactly that many labels (to within one).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from raymlc.config import DemoConfig
from raymlc.data.synthetic import (
    LABEL_STREAM,
    SPLITS,
    explicit_negatives,
    overlaps,
    removed_labels,
    render_splits,
    write_dataset,
)

Rng = np.random.Generator

DEMO_CLASSES: tuple[str, ...] = (
    "tone",
    "rising_chirp",
    "falling_chirp",
    "noise_burst",
    "band_noise",
    "click_train",
    "harmonic_stack",
    "tremolo",
    "vibrato",
    "pluck",
    "hum",
    "siren",
)
DURATION_S = (0.3, 1.5)
LEVEL_DB = (-30.0, 0.0)
NOISE_DB = (-50.0, -35.0)
# Structured removal score: 1 per 10 dB below full level, 2 for an event fully overlapped by others.
OVERLAP_WEIGHT = 2.0
SCORE_SLOPE = 1.5
_REFERENCE_RMS = 0.1


@dataclass(frozen=True)
class Event:
    """One sound event of a clip; `overlap`: time shared with the other events / duration, capped at 1."""

    label: str
    onset_s: float
    duration_s: float
    level_db: float
    overlap: float


# ---------------------------------------------------------------- event synthesis (one array per event)


def _freq(rng: Rng, low: float, high: float, sr: int) -> float:
    """Log-uniform frequency, kept below 0.45·sr so nothing aliases."""
    return min(float(np.exp(rng.uniform(np.log(low), np.log(high)))), 0.45 * sr)


def _harmonics(f0: float, amplitudes: np.ndarray, t: np.ndarray, rng: Rng, sr: int) -> np.ndarray:
    """Sum of sines at k·f0 with the given amplitudes (those above 0.45·sr are left out)."""
    k = np.arange(1, len(amplitudes) + 1)
    amplitudes = np.where(k * f0 < 0.45 * sr, amplitudes, 0.0)
    phases = rng.uniform(0, 2 * np.pi, len(k))
    return amplitudes @ np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None])


def _shaped_noise(rng: Rng, m: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise filtered in the frequency domain by `gain(frequencies)`."""
    spectrum = np.fft.rfft(rng.standard_normal(m))
    return np.fft.irfft(spectrum * gain(np.fft.rfftfreq(m, 1 / sr)), m)


def _tone(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    return np.sin(2 * np.pi * _freq(rng, 250, 2500, sr) * t + rng.uniform(0, 2 * np.pi))


def _rising_chirp(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    f0 = _freq(rng, 200, 800, sr)
    ratio = max(min(f0 * rng.uniform(2.5, 6), 0.45 * sr) / f0, 1.01)
    span = t[-1] + 1 / sr
    return np.sin(2 * np.pi * f0 * span / np.log(ratio) * (ratio ** (t / span) - 1))


def _falling_chirp(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    f0 = _freq(rng, 1500, 5000, sr)
    ratio = rng.uniform(2.5, 6)
    span = t[-1] + 1 / sr
    return np.sin(2 * np.pi * f0 * span / np.log(ratio) * (1 - ratio ** (-t / span)))


def _noise_burst(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    return rng.standard_normal(len(t))


def _band_noise(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    center = _freq(rng, 400, 4000, sr) / 1.3
    octaves = rng.uniform(0.15, 0.5)
    return _shaped_noise(rng, len(t), sr, lambda f: np.exp(-0.5 * (np.log2(np.maximum(f, 1) / center) / octaves) ** 2))


def _click_train(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    period = 1 / rng.uniform(4, 30)
    times = np.arange(0, t[-1], period) + rng.uniform(0, period)
    times = times + rng.normal(0, 0.05 * period, len(times))
    impulses = np.zeros(len(t))
    impulses[np.clip((times * sr).astype(int), 0, len(t) - 1)] = 1.0
    k = max(int(0.004 * sr), 2)
    kernel = rng.standard_normal(k) * np.exp(-np.arange(k) / (k / 5))
    return np.convolve(impulses, kernel)[: len(t)]


def _harmonic_stack(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    n = rng.integers(6, 13)
    return _harmonics(_freq(rng, 150, 500, sr), np.arange(1, n + 1) ** -rng.uniform(0.5, 1.5), t, rng, sr)


def _tremolo(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    depth = rng.uniform(0.7, 1.0)
    envelope = 1 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(4, 12) * t))
    return envelope * np.sin(2 * np.pi * _freq(rng, 300, 2000, sr) * t)


def _vibrato(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    center, rate = _freq(rng, 300, 2000, sr), rng.uniform(4, 8)
    deviation = center * rng.uniform(0.03, 0.08)
    return np.sin(2 * np.pi * center * t + deviation / rate * np.sin(2 * np.pi * rate * t))


def _pluck(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    f0, tau = _freq(rng, 150, 900, sr), rng.uniform(0.08, 0.3)
    k = np.arange(1, 9)
    phases = rng.uniform(0, 2 * np.pi, len(k))
    decays = np.exp(-t * np.sqrt(k)[:, None] / tau)
    partials = np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None]) * decays
    return np.where(k * f0 < 0.45 * sr, 1 / k, 0.0) @ partials


def _hum(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    return _harmonics(rng.uniform(50, 120), rng.uniform(0.2, 1.0, 6), t, rng, sr)


def _siren(rng: Rng, t: np.ndarray, sr: int) -> np.ndarray:
    low = _freq(rng, 500, 1500, sr)
    high = min(low * rng.uniform(1.25, 1.6), 0.45 * sr)
    period = rng.uniform(0.2, 0.5)
    frequency = np.where((t + rng.uniform(0, period)) % period < period / 2, low, high)
    return np.sin(2 * np.pi * np.cumsum(frequency) / sr)


_SYNTHS: dict[str, Callable[[Rng, np.ndarray, int], np.ndarray]] = {
    "tone": _tone,
    "rising_chirp": _rising_chirp,
    "falling_chirp": _falling_chirp,
    "noise_burst": _noise_burst,
    "band_noise": _band_noise,
    "click_train": _click_train,
    "harmonic_stack": _harmonic_stack,
    "tremolo": _tremolo,
    "vibrato": _vibrato,
    "pluck": _pluck,
    "hum": _hum,
    "siren": _siren,
}


def _fades(m: int, sr: int, attack_s: float) -> np.ndarray:
    """Raised-cosine fade-in of `attack_s` and a 10 ms fade-out."""
    n_in, n_out = min(int(attack_s * sr), m), min(int(0.01 * sr), m)
    envelope = np.ones(m)
    envelope[:n_in] *= np.sin(0.5 * np.pi * (np.arange(n_in) + 0.5) / max(n_in, 1)) ** 2
    envelope[m - n_out :] *= np.sin(0.5 * np.pi * (np.arange(n_out, 0, -1) - 0.5) / max(n_out, 1)) ** 2
    return envelope


def _render_event(rng: Rng, label: str, m: int, sr: int) -> np.ndarray:
    """`m` samples of one event at unit RMS."""
    t = np.arange(m) / sr
    wave = _SYNTHS[label](rng, t, sr) * _fades(m, sr, 0.001 if label in ("pluck", "click_train") else 0.01)
    return wave / max(float(np.sqrt(np.mean(wave**2))), 1e-8)


# ---------------------------------------------------------------- clips


def _plan_events(rng: Rng, config: DemoConfig) -> list[Event]:
    n = int(rng.integers(config.min_events, config.max_events + 1))
    classes = np.sort(rng.choice(len(DEMO_CLASSES), n, replace=False))
    durations = np.minimum(rng.uniform(*DURATION_S, n), config.clip_seconds)
    onsets = rng.uniform(0, 1, n) * (config.clip_seconds - durations)
    levels = rng.uniform(*LEVEL_DB, n)
    shared = overlaps(onsets, durations)
    rows = zip(classes, onsets.round(4), durations.round(4), levels.round(2), shared.round(4), strict=True)
    return [Event(DEMO_CLASSES[c], float(o), float(d), float(lv), float(ov)) for c, o, d, lv, ov in rows]


def _render_clip(rng: Rng, events: list[Event], config: DemoConfig) -> np.ndarray:
    """The mixture: events over coloured noise (white..pink), scaled to a random peak in [0.3, 0.9]."""
    sr, n = config.sample_rate, round(config.clip_seconds * config.sample_rate)
    slope = rng.uniform(0, 1)
    noise = _shaped_noise(rng, n, sr, lambda f: np.maximum(f, 20.0) ** (-slope / 2))
    mix = noise * (_REFERENCE_RMS * 10 ** (rng.uniform(*NOISE_DB) / 20) / max(float(noise.std()), 1e-8))
    for event in events:
        start = min(round(event.onset_s * sr), n - 1)
        m = min(round(event.duration_s * sr), n - start)
        gain = _REFERENCE_RMS * 10 ** (event.level_db / 20)
        mix[start : start + m] += _render_event(rng, event.label, m, sr) * gain
    return mix * (rng.uniform(0.3, 0.9) / max(float(np.abs(mix).max()), 1e-8))


def _make_clip(config: DemoConfig, split_index: int, index: int, path: Path) -> list[Event]:
    """Plan, render and write one clip; its own seed stream makes it independent of the others."""
    rng = np.random.default_rng([config.seed, split_index, index])
    events = _plan_events(rng, config)
    sf.write(path, _render_clip(rng, events, config), config.sample_rate, subtype="PCM_16")
    return events


# ---------------------------------------------------------------- incomplete labels


def _drop_scores(events: list[Event], removal: str, rng: Rng) -> np.ndarray:
    if removal == "random":
        class_offsets = dict(zip(DEMO_CLASSES, rng.normal(0, 1, len(DEMO_CLASSES)), strict=True))
        return np.array([class_offsets[e.label] for e in events])
    return SCORE_SLOPE * np.array([-e.level_db / 10 + OVERLAP_WEIGHT * e.overlap for e in events])


# ---------------------------------------------------------------- the dataset


def _split_rows(split: str, clips: list[list[Event]], paths: list[Path], config: DemoConfig, rng: Rng) -> list[dict]:
    train = split == "train"
    if train:
        scores = _drop_scores([event for events in clips for event in events], config.removal, rng)
        removed = removed_labels(clips, scores, config.drop_fraction, rng)
    else:
        removed = [set() for _ in clips]
    rows = []
    for path, events, dropped in zip(paths, clips, removed, strict=True):
        present = {event.label for event in events}
        negatives = explicit_negatives(present, DEMO_CLASSES, config.explicit_negative_rate, rng) if train else []
        rows.append(
            {
                "clip_id": path.stem,
                "audio": str(path),
                "labels": [e.label for e in events if e.label not in dropped],
                "explicit_negatives": negatives,
                "removed_labels": [e.label for e in events if e.label in dropped],
                "split": split,
                "n_events": len(events),
                "events": json.dumps([asdict(e) for e in events]),
            }
        )
    return rows


def make_demo(
    output_dir: str | Path,
    config: DemoConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the demo dataset under `output_dir` and return the path of its manifest.

    Writes `audio/{split}/{clip_id}.{flac|wav}` (16-bit PCM), `classes.json` and `manifest.parquet`, whose
    `audio` column holds absolute paths and whose `events` column is the JSON list of each clip's true
    events (label, onset_s, duration_s, level_db, overlap). The same config gives the same dataset.
    """
    config = config or DemoConfig()
    if config.max_events > len(DEMO_CLASSES):
        raise ValueError(f"max_events={config.max_events} exceeds the {len(DEMO_CLASSES)} demo classes")
    output_dir = Path(output_dir).resolve()
    sizes = (config.n_train, config.n_val, config.n_test)
    paths, clips = render_splits(
        output_dir, sizes, config.audio_format, functools.partial(_make_clip, config), progress
    )
    rng = np.random.default_rng([config.seed, LABEL_STREAM])
    rows = [row for split in SPLITS for row in _split_rows(split, clips[split], paths[split], config, rng)]
    return write_dataset(output_dir, rows, DEMO_CLASSES)
