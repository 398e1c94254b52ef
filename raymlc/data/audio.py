"""Decode audio clips (local files or s3://, gs:// URIs) to mono float32 and cut fixed-size windows."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import soundfile as sf
import torch
import torchaudio.functional as AF

# libsndfile shrinks a truncated WAV's length to what is on disk and only says so in its log.
_TRUNCATED_WAV = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
# Compressed formats whose frame count is an estimate: a short read within this fraction is not an error.
_LENGTH_TOLERANCE = {"MP3": 0.01}
_DECODE_ERRORS = (OSError, RuntimeError, ValueError, TypeError, EOFError, pa.ArrowException)


T = TypeVar("T")


class AudioError(Exception):
    """A clip that cannot be used: missing, undecodable, empty or non-finite audio."""

    def __init__(self, clip_id: str, reason: str) -> None:
        super().__init__(clip_id, reason)  # args stay (clip_id, reason) so the error pickles across processes
        self.clip_id = clip_id
        self.reason = reason

    def __str__(self) -> str:
        return f"clip {self.clip_id}: {self.reason}"


def _has_scheme(source: str) -> bool:
    # A one-letter "scheme" is a Windows drive (C:\...), not a URI.
    return len(urlsplit(source).scheme) > 1


def _open(source: str, clip_id: str) -> str | IO[bytes]:
    """A path soundfile opens itself, or a seekable pyarrow file for URIs."""
    if _has_scheme(source):
        filesystem, path = pafs.FileSystem.from_uri(source)
        return filesystem.open_input_file(path)
    if not Path(source).is_file():
        raise AudioError(clip_id, f"file not found: {source}")
    return source


def _frame_range(
    start_s: float | None, end_s: float | None, sample_rate: int, frames: int, clip_id: str
) -> tuple[int, int]:
    """[start, stop) in frames of the file; the end is clipped to the file's length."""
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise AudioError(clip_id, f"invalid segment: {name}={value}")
    start = round(start_s * sample_rate) if start_s is not None else 0
    stop = min(frames, round(end_s * sample_rate)) if end_s is not None else frames
    if frames == 0:
        raise AudioError(clip_id, "zero-length audio")
    if stop <= start:
        duration = frames / sample_rate
        raise AudioError(clip_id, f"empty segment [{start_s}, {end_s}) s of {duration:.3f} s of audio")
    return start, stop


def _check_truncated_wav(file: sf.SoundFile, clip_id: str) -> None:
    match = _TRUNCATED_WAV.search(file.extra_info)
    if match and int(match[1]) > int(match[2]):
        raise AudioError(clip_id, f"truncated file: header promises {match[1]} data bytes, found {match[2]}")


def _read(
    handle: str | IO[bytes], clip_id: str, start_s: float | None, end_s: float | None, window: Window | None
) -> tuple[np.ndarray, int, int]:
    """The [start_s, end_s) segment, or only the frames holding `window`'s crop, as [frames, channels]
    float32; the file's sample rate; the samples (at the window's rate) to drop before the crop."""
    with sf.SoundFile(handle) as file:
        _check_truncated_wav(file, clip_id)
        start, stop = _frame_range(start_s, end_s, file.samplerate, file.frames, clip_id)
        skip = 0
        if window is not None:
            start, stop, skip = window.file_frames(start, stop, file.samplerate)
        if start:
            file.seek(start)
        data = file.read(stop - start, dtype="float32", always_2d=True)
        missing = stop - start - len(data)
        if missing > _LENGTH_TOLERANCE.get(file.format, 0.0) * file.frames or not len(data):
            raise AudioError(clip_id, f"truncated file: decoded {len(data)} of {stop - start} frames")
        return data, file.samplerate, skip


def crop_offset(length: int, n_samples: int, key: int | None) -> int:
    """Where a training crop of `n_samples` starts in a clip of `length` samples: drawn uniformly by the
    seeded generator of `key` (one per batch slot, so a crop never depends on which process reads it),
    0 without a key or when the clip is not longer than the window."""
    if key is None or length <= n_samples:
        return 0
    return int(np.random.default_rng(key).integers(0, length - n_samples + 1))


@dataclass(frozen=True)
class Window:
    """A crop of `n_samples` at `sample_rate`, placed in the clip by `crop_offset(…, key)`."""

    n_samples: int
    sample_rate: int
    key: int | None = None

    def file_frames(self, start: int, stop: int, file_rate: int) -> tuple[int, int, int]:
        """[first, last) frames of the file that hold the crop of the segment [start, stop), and how many
        samples (at `sample_rate`) of those frames come before the crop."""
        ratio = file_rate / self.sample_rate
        offset = crop_offset(round((stop - start) / ratio), self.n_samples, self.key)
        first = start + math.floor(offset * ratio)
        skip = offset - round((first - start) / ratio)
        return first, min(stop, first + math.ceil((self.n_samples + skip) * ratio) + 1), skip


def _with_file(source: str | Path, clip_id: str, use: Callable[[str | IO[bytes]], T]) -> T:
    """`use(handle)` on the opened `source`, closed afterwards; any failure raised as `AudioError`."""
    if not source:
        raise AudioError(clip_id, "no audio path")
    source = str(source)
    try:
        handle = _open(source, clip_id)
        try:
            return use(handle)
        finally:
            if not isinstance(handle, str):
                handle.close()
    except AudioError:
        raise
    except _DECODE_ERRORS as error:
        raise AudioError(clip_id, f"cannot decode {source}: {error}") from error


def decode_audio(
    source: str | Path,
    *,
    clip_id: str,
    sample_rate: int,
    start_s: float | None = None,
    end_s: float | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """Mono float32 audio of `source` at `sample_rate`, only the [start_s, end_s) segment when given, and
    with `window` only that crop of it (exactly `window.n_samples`, zero-padded; only the crop is decoded).

    Local paths are read with soundfile; URIs with a scheme (s3://, gs://, file://) through pyarrow.fs.
    Any failure is raised as `AudioError` naming the clip.
    """
    data, file_rate, skip = _with_file(source, clip_id, lambda handle: _read(handle, clip_id, start_s, end_s, window))
    if not np.isfinite(data).all():
        raise AudioError(clip_id, "audio contains NaN or Inf samples")
    wave = data.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        wave = AF.resample(torch.from_numpy(wave), file_rate, sample_rate).numpy()
    return wave if window is None else fit_window(wave[skip:], window.n_samples)


def probe_audio(source: str, *, clip_id: str, start_s: float | None = None, end_s: float | None = None) -> None:
    """Check from the file's header, without decoding, that the clip exists, opens and has a non-empty
    [start_s, end_s) segment; `AudioError` naming the clip otherwise."""

    def check(handle: str | IO[bytes]) -> None:
        with sf.SoundFile(handle) as file:
            _check_truncated_wav(file, clip_id)
            _frame_range(start_s, end_s, file.samplerate, file.frames, clip_id)

    _with_file(source, clip_id, check)


def fit_window(wave: np.ndarray, n_samples: int, key: int | None = None) -> np.ndarray:
    """Exactly `n_samples`: the crop at `crop_offset(len(wave), n_samples, key)` (the left-aligned window
    without a key); shorter clips are zero-padded on the right."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) > n_samples:
        start = crop_offset(len(wave), n_samples, key)
        return wave[start : start + n_samples].copy()
    return np.pad(wave, (0, n_samples - len(wave)))


def eval_windows(wave: np.ndarray, n_samples: int, hop: int | None = None) -> np.ndarray:
    """[W, n_samples] windows every `hop` samples (default `n_samples`) covering the whole clip;
    the last one is zero-padded and there is always at least one."""
    hop = hop or n_samples
    wave = np.asarray(wave, dtype=np.float32)
    n_windows = 1 + max(0, math.ceil((len(wave) - n_samples) / hop))
    padded = np.pad(wave, (0, (n_windows - 1) * hop + n_samples - len(wave)))
    return np.lib.stride_tricks.sliding_window_view(padded, n_samples)[::hop].copy()


def decode_clips(rows: Iterable[Mapping], *, sample_rate: int) -> tuple[list[np.ndarray], list[int], list[dict]]:
    """Decode manifest rows (clip_id, audio, start_s, end_s) into whole waveforms.

    Returns the waveforms, the positions (in `rows`) of the clips that loaded, and
    {"clip_id", "audio", "reason"} for each clip that did not; a bad clip never stops the batch.
    """
    waves: list[np.ndarray] = []
    loaded: list[int] = []
    rejects: list[dict] = []
    for position, row in enumerate(rows):
        try:
            waves.append(
                decode_audio(
                    row["audio"],
                    clip_id=row["clip_id"],
                    sample_rate=sample_rate,
                    start_s=row.get("start_s"),
                    end_s=row.get("end_s"),
                )
            )
        except AudioError as error:
            rejects.append({"clip_id": row["clip_id"], "audio": row["audio"], "reason": error.reason})
            continue
        loaded.append(position)
    return waves, loaded, rejects


def wav_segment(
    source: str, *, clip_id: str, start_s: float | None = None, end_s: float | None = None, block_frames: int = 65536
) -> Iterator[bytes]:
    """The [start_s, end_s) segment of `source` as a 16-bit PCM WAV file (its channels and rate), in chunks:
    a header, then `block_frames` frames at a time, so a long file is never read whole. The file is opened
    and checked before the first chunk is returned (`AudioError` naming the clip when it cannot be)."""
    try:
        file = sf.SoundFile(_open(str(source), clip_id))
        start, stop = _frame_range(start_s, end_s, file.samplerate, file.frames, clip_id)
        file.seek(start)
    except AudioError:
        raise
    except _DECODE_ERRORS as error:
        raise AudioError(clip_id, f"{type(error).__name__}: {error}") from None
    size = (stop - start) * file.channels * 2
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            file.channels,
            file.samplerate,
            file.samplerate * file.channels * 2,
            file.channels * 2,
            16,
        )
    )

    def chunks() -> Iterator[bytes]:
        with file:
            yield header + b"data" + struct.pack("<I", size)
            left = stop - start
            while left > 0:
                block = file.read(min(block_frames, left), dtype="int16", always_2d=True)
                if not len(block):  # a file shorter than its header says: pad, so the length holds
                    block = np.zeros((left, file.channels), np.int16)
                left -= len(block)
                yield block.tobytes()

    return chunks()
