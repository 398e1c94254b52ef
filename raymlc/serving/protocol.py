"""Request parsing and response shaping for the tagger service, with no web framework and no Ray.

Ray Serve (`raymlc.distributed.serving`) and the plain single-process app (`raymlc.serving.app.DirectBackend`)
both call these functions: uploaded audio bytes or a JSON feature vector in, a validated array out (or a
`RequestError` carrying the 4xx status and a message that says what was wrong); `TagRow`s out as JSON.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from raymlc.bundle import Tagger, load_bundle
from raymlc.data.audio import AudioError, decode_audio

RAW_AUDIO_TYPES = ("audio/", "application/octet-stream")
SMOKE_SECONDS = 0.1  # the silent clip `ServedModel.smoke_test` tags
MAX_RESAMPLE_TERMS = 1_000_000  # allows every standard rate (8 kHz ... 192 kHz) to and from any other


class RequestError(Exception):
    """A request the service refuses: HTTP `status` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ServedModel:
    """A loaded tagger and its version (a content hash: bundle metadata has no model version of its own)."""

    tagger: Tagger
    version: str
    uri: str

    @classmethod
    def load(cls, uri: str) -> ServedModel:
        tagger = load_bundle(uri)
        return cls(tagger, model_version(tagger), uri)

    def smoke_test(self) -> None:
        """Tag a short silent clip (or a zero feature vector); raise unless every output is finite."""
        tagger = self.tagger
        if tagger.is_audio:
            probe = np.zeros(max(1, round(SMOKE_SECONDS * tagger.sample_rate)), np.float32)
        else:
            probe = np.zeros(tagger.metadata["feature_dim"], np.float32)
        result = tagger.tag([probe])
        if not (np.isfinite(result.logits).all() and np.isfinite(result.thresholds).all()):
            raise RuntimeError(f"model {self.version} ({self.uri}) produced non-finite outputs on a silent probe")


def model_version(tagger: Tagger) -> str:
    """12 hex digits of SHA-256 over the weights, the threshold rule, the memory bank and the labels."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tagger.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    for name, array in sorted(tagger.thresholds.to_arrays().items()):
        digest.update(name.encode())
        digest.update(np.asarray(array).tobytes())
    digest.update(tagger.bank.embeddings.tobytes())
    digest.update(tagger.bank.targets.tobytes())
    digest.update("\n".join(tagger.vocabulary.names).encode())
    return digest.hexdigest()[:12]


def body_kind(content_type: str | None) -> str:
    """`multipart` or `raw` for the audio route's Content-Type; a 415 `RequestError` otherwise."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type.startswith(RAW_AUDIO_TYPES):
        return "raw"
    raise RequestError(
        415,
        f"unsupported Content-Type {media_type or '(none)'!r}: send the audio file as multipart/form-data "
        "(field 'file') or as the raw body with an audio/* Content-Type",
    )


def decode_upload(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 audio at `sample_rate` from an uploaded file's bytes (any format libsndfile reads).

    Raises `RequestError`: 400 for empty, undecodable, truncated or non-finite audio and for sample rates
    that are costly to resample, 413 for audio longer than `max_seconds` (both checked before decoding).
    """
    if not data:
        raise RequestError(400, "zero-length audio: the upload has no bytes")
    # decode_audio reads paths (local or URI), so the upload goes through a short-lived temporary file.
    handle, path = tempfile.mkstemp(prefix="raymlc-upload-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        _check_header(path, sample_rate, max_seconds)
        return decode_audio(path, clip_id="upload", sample_rate=sample_rate)
    except AudioError as error:
        reason = error.reason.replace(f"Error opening {path!r}: ", "").replace(path, "the upload")
        raise RequestError(400, f"unusable audio: {reason}") from None
    finally:
        os.unlink(path)


def _check_header(path: str, sample_rate: int, max_seconds: float) -> None:
    """Refuse audio longer than `max_seconds`, and sample rates torchaudio cannot resample to `sample_rate`
    cheaply: its kernel grows with (rate/g)·(sample_rate/g), g = gcd (a 0.1-s clip at 44101 Hz takes 12 GB
    and 40 s to reach 16 kHz). Files libsndfile cannot open pass through: decode_audio says what is wrong."""
    try:
        info = sf.info(path)
    except (RuntimeError, ValueError, TypeError):
        return
    common = math.gcd(info.samplerate, sample_rate)
    if (info.samplerate // common) * (sample_rate // common) > MAX_RESAMPLE_TERMS:
        raise RequestError(
            400, f"unsupported sample rate {info.samplerate} Hz (use a standard rate, e.g. 16000, 44100 or 48000 Hz)"
        )
    if info.duration > max_seconds:
        raise RequestError(413, f"audio is {info.duration:.2f} s long; this service tags at most {max_seconds:g} s")


def parse_embedding(values: Sequence[float], feature_dim: int) -> np.ndarray:
    """A feature vector float32 [feature_dim]; a 400 `RequestError` for the wrong length or NaN/Inf."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (feature_dim,):
        raise RequestError(400, f"embedding has {vector.size} values; this model takes {feature_dim}")
    if not np.isfinite(vector).all():
        raise RequestError(400, "embedding contains NaN or Inf values")
    if np.abs(vector).max(initial=0.0) > np.finfo(np.float32).max:
        raise RequestError(400, "embedding values overflow float32")
    return vector.astype(np.float32)


@dataclass(frozen=True)
class TagRow:
    """One clip's outputs (logit scale) and the model that produced them."""

    names: tuple[str, ...]
    scores: np.ndarray  # float32 [C]
    thresholds: np.ndarray  # float32 [C]
    present: np.ndarray  # bool [C]
    version: str


def tag_inputs(items: Sequence[tuple[ServedModel, np.ndarray]]) -> list[TagRow]:
    """Tag (model, input) pairs in input order: one `Tagger.tag` call per distinct model (a batch formed
    during a hot reload holds requests for the old model and the new one)."""
    rows: list[TagRow | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for position, (model, _) in enumerate(items):
        groups.setdefault(id(model), []).append(position)
    for positions in groups.values():
        model = items[positions[0]][0]
        result = model.tagger.tag([items[p][1] for p in positions])
        names = model.tagger.vocabulary.names
        for row, position in enumerate(positions):
            scores, thresholds, present = result.logits[row], result.thresholds[row], result.present[row]
            rows[position] = TagRow(names, scores, thresholds, present, model.version)
    return rows


def label_entries(
    names: Sequence[str], scores: np.ndarray, thresholds: np.ndarray, present: np.ndarray, order: Sequence[int]
) -> list[dict]:
    """The JSON entries {name, score, threshold, present} of one clip's labels at positions `order`."""
    return [
        {"name": names[c], "score": float(scores[c]), "threshold": float(thresholds[c]), "present": bool(present[c])}
        for c in order
    ]


def tag_response(row: TagRow, top_k: int | None = None, duration_s: float | None = None) -> dict:
    """JSON body for one clip: its present tags and its labels by descending score (the `top_k` first)."""
    order = np.argsort(-row.scores, kind="stable")
    return {
        "model_version": row.version,
        "duration_s": duration_s,
        "tags": [row.names[c] for c in order if row.present[c]],
        "labels": label_entries(row.names, row.scores, row.thresholds, row.present, order[:top_k]),
    }
