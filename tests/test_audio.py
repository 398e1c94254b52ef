"""Decoding (formats, resampling, segments, failures) and windowing of raymlc.data.audio."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raymlc.data.audio import AudioError, Window, decode_audio, decode_clips, eval_windows, fit_window, probe_audio

SR = 16000
FREQ = 1000.0


def _mp3_writable() -> bool:
    return "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3")


FORMATS = [
    ("wav", "PCM_16"),
    ("flac", "PCM_16"),
    ("ogg", "VORBIS"),
    pytest.param(
        "mp3",
        "MPEG_LAYER_III",
        marks=pytest.mark.skipif(not _mp3_writable(), reason="libsndfile was built without MP3 encoding"),
    ),
]


def _stereo_sine(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * FREQ * t)
    return np.stack([left, 0.5 * left], axis=1)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _write(path, data: np.ndarray, rate: int = SR, **kwargs) -> str:
    sf.write(path, data, rate, **kwargs)
    return str(path)


@pytest.mark.parametrize("rate", [8000, SR])
@pytest.mark.parametrize(("ext", "subtype"), FORMATS)
def test_decode_formats_to_mono_at_target_rate(tmp_path, ext, subtype, rate):
    path = _write(tmp_path / f"sine.{ext}", _stereo_sine(rate), rate, subtype=subtype)
    wave = decode_audio(path, clip_id="c", sample_rate=SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - SR) <= SR * 0.01
    assert _peak_hz(wave, SR) == pytest.approx(FREQ, abs=5)
    # the mean of the 0.5 and 0.25 amplitude channels: a 0.375 amplitude sine
    assert np.sqrt(np.mean(wave**2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.1)


def test_lossless_decode_is_exact_channel_mean(tmp_path):
    data = _stereo_sine(SR)
    wave = decode_audio(_write(tmp_path / "x.wav", data, subtype="FLOAT"), clip_id="c", sample_rate=SR)
    np.testing.assert_allclose(wave, data.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_segment_reads_exact_samples(tmp_path, ext):
    ramp = (np.arange(SR) % 1000 - 500) / 1024  # exactly representable in 16-bit PCM
    path = _write(tmp_path / f"ramp.{ext}", ramp, subtype="PCM_16")
    segment = decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.25, end_s=0.5)
    np.testing.assert_array_equal(segment, ramp[4000:8000].astype(np.float32))
    tail = decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.75, end_s=5.0)  # end clipped to the file
    np.testing.assert_array_equal(tail, ramp[12000:].astype(np.float32))


def test_segment_is_resampled(tmp_path):
    path = _write(tmp_path / "low.wav", _stereo_sine(8000), 8000)
    assert len(decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.5)) == SR // 2


def test_uri_goes_through_pyarrow(tmp_path):
    path = _write(tmp_path / "sine.flac", _stereo_sine(SR))
    local = decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.1, end_s=0.2)
    remote = decode_audio(f"file://{path}", clip_id="c", sample_rate=SR, start_s=0.1, end_s=0.2)
    np.testing.assert_array_equal(remote, local)


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def _truncated_wav(tmp_path):
    full = _write(tmp_path / "full.wav", _stereo_sine(SR))
    path = tmp_path / "truncated.wav"
    path.write_bytes(Path(full).read_bytes()[:30000])
    return path


def _truncated_flac(tmp_path):
    full = _write(tmp_path / "full.flac", np.random.default_rng(0).uniform(-0.5, 0.5, SR))
    path = tmp_path / "truncated.flac"
    path.write_bytes(Path(full).read_bytes()[:10000])
    return path


def _empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _zero_length(tmp_path):
    return _write(tmp_path / "zero.wav", np.zeros((0, 1)))


def _nan_samples(tmp_path):
    data = _stereo_sine(SR)
    data[100, 1] = np.nan
    return _write(tmp_path / "nan.wav", data, subtype="FLOAT")


def _inf_samples(tmp_path):
    data = _stereo_sine(SR)
    data[100, 0] = np.inf
    return _write(tmp_path / "inf.wav", data, subtype="FLOAT")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_corrupt, "cannot decode"),
        (_truncated_wav, "truncated"),
        (_truncated_flac, ""),
        (_empty_file, "cannot decode"),
        (_zero_length, "zero-length"),
        (lambda tmp_path: tmp_path / "missing.wav", "not found"),
        (lambda tmp_path: f"file://{tmp_path}/missing.wav", "cannot decode"),
        (_nan_samples, "NaN"),
        (_inf_samples, "Inf"),
    ],
)
def test_bad_audio_raises_audio_error(tmp_path, make, reason):
    with pytest.raises(AudioError, match=r"^clip bad-1: ") as caught:
        decode_audio(str(make(tmp_path)), clip_id="bad-1", sample_rate=SR)
    assert caught.value.clip_id == "bad-1"
    assert reason in caught.value.reason


@pytest.mark.parametrize(("start_s", "end_s"), [(2.0, None), (0.5, 0.5), (0.6, 0.4), (-1.0, None), (float("nan"), 1.0)])
def test_empty_or_invalid_segment_raises(tmp_path, start_s, end_s):
    path = _write(tmp_path / "sine.wav", _stereo_sine(SR))
    with pytest.raises(AudioError, match="segment"):
        decode_audio(path, clip_id="c", sample_rate=SR, start_s=start_s, end_s=end_s)


def test_audio_error_pickles():
    error = pickle.loads(pickle.dumps(AudioError("x", "broken")))
    assert (error.clip_id, error.reason, str(error)) == ("x", "broken", "clip x: broken")


def test_decode_clips_collects_rejects_and_goes_on(tmp_path):
    good = _write(tmp_path / "good.wav", _stereo_sine(8000, 2.0), 8000)
    short = _write(tmp_path / "short.flac", _stereo_sine(SR, 0.25))
    rows = [
        {"clip_id": "a", "audio": good, "start_s": None, "end_s": None},
        {"clip_id": "b", "audio": str(tmp_path / "missing.wav"), "start_s": None, "end_s": None},
        {"clip_id": "c", "audio": str(_corrupt(tmp_path)), "start_s": None, "end_s": None},
        {"clip_id": "d", "audio": short, "start_s": None, "end_s": None},
        {"clip_id": "e", "audio": good, "start_s": 0.5, "end_s": 1.0},
        {"clip_id": "f", "audio": None, "start_s": None, "end_s": None},
    ]
    waves, loaded, rejects = decode_clips(rows, sample_rate=SR)
    assert loaded == [0, 3, 4]
    assert [len(w) for w in waves] == [2 * SR, SR // 4, SR // 2]
    assert all(w.dtype == np.float32 for w in waves)
    assert [r["clip_id"] for r in rejects] == ["b", "c", "f"]
    assert rejects[0]["audio"] == rows[1]["audio"] and "not found" in rejects[0]["reason"]


def test_decode_clips_all_rejected(tmp_path):
    rows = [{"clip_id": "b", "audio": str(tmp_path / "missing.wav"), "start_s": None, "end_s": None}]
    waves, loaded, rejects = decode_clips(rows, sample_rate=SR)
    assert waves == [] and loaded == [] and len(rejects) == 1


def test_fit_window_crops_and_pads():
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_window(wave, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_window(wave[:3], 5), [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(fit_window(wave[:3], 5, key=0), [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(fit_window(wave, 10, key=0), wave)
    crops = [fit_window(wave, 4, key=key) for key in range(40)]
    for key, crop in enumerate(crops):
        start = np.random.default_rng(key).integers(0, 7)  # uniform over the 7 possible starts
        assert crop.dtype == np.float32 and np.array_equal(crop, np.arange(start, start + 4))
    assert {c[0] for c in crops} == set(range(7))


@pytest.mark.parametrize("rate", [SR, 8000])
def test_window_decodes_only_the_crop_of_the_segment(tmp_path, rate):
    ramp = (np.arange(rate * 2) % 1000 - 500) / 1024
    path = _write(tmp_path / "ramp.flac", ramp, rate, subtype="PCM_16")
    segment = decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.5, end_s=1.5)
    for key in range(5):
        window = Window(n_samples=4000, sample_rate=SR, key=key)
        crop = decode_audio(path, clip_id="c", sample_rate=SR, start_s=0.5, end_s=1.5, window=window)
        expected = fit_window(segment, 4000, key=key)  # the same crop of the whole decoded segment
        assert crop.shape == (4000,)
        if rate == SR:
            np.testing.assert_array_equal(crop, expected)
        else:  # resampled from the crop alone: equal away from the edges the filter sees differently
            np.testing.assert_allclose(crop[200:-200], expected[200:-200], atol=2e-3)
    short = decode_audio(path, clip_id="c", sample_rate=SR, start_s=1.9, window=Window(4000, SR, key=1))
    assert short.shape == (4000,) and not short[1700:].any()  # 0.1 s of audio, zero-padded


def test_probe_reads_headers_only(tmp_path):
    path = _write(tmp_path / "a.wav", _stereo_sine(SR))
    probe_audio(path, clip_id="a", start_s=0.5)
    with pytest.raises(AudioError, match="empty segment"):
        probe_audio(path, clip_id="a", start_s=2.0)
    with pytest.raises(AudioError, match="file not found"):
        probe_audio(str(tmp_path / "missing.wav"), clip_id="m")
    with pytest.raises(AudioError, match="cannot decode"):
        probe_audio(str(_corrupt(tmp_path)), clip_id="x")


@pytest.mark.parametrize(
    ("length", "n", "hop", "expected"),
    [(3, 4, None, 1), (4, 4, None, 1), (5, 4, None, 2), (8, 4, None, 2), (9, 4, 2, 4), (0, 4, None, 1)],
)
def test_eval_windows_cover_the_clip(length, n, hop, expected):
    wave = np.arange(1, length + 1, dtype=np.float32)
    windows = eval_windows(wave, n, hop)
    assert windows.shape == (expected, n) and windows.dtype == np.float32
    step = hop or n
    for w, window in enumerate(windows):
        chunk = wave[w * step : w * step + n]
        np.testing.assert_array_equal(window, np.pad(chunk, (0, n - len(chunk))))
    assert (expected - 1) * step + n >= length
    np.testing.assert_array_equal(eval_windows(wave, n, hop), windows)
