"""The review app over HTTP (FastAPI's test client): the queue, decisions with their 4xx errors, streamed audio
segments against soundfile, an item whose audio is missing, and the optional bearer token."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from raymlc.data.audio import wav_segment
from raymlc.reviewing import QUEUE_SCHEMA, DecisionLog
from raymlc.serving.review_app import build_review_app

RATE = 8000


def write_queue(tmp_path: Path) -> pa.Table:
    """Two clips with audio (one 3-s stereo file, one mono) and one whose file is missing."""
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", rng.uniform(-0.5, 0.5, (3 * RATE, 2)), RATE, subtype="PCM_16")
    sf.write(tmp_path / "short.flac", rng.uniform(-0.5, 0.5, RATE), RATE)
    rows = [
        ("dog", 1, "c1", str(tmp_path / "long.wav"), 1.0, 2.5, 0.9, 1.5, ["cat"]),
        ("dog", 2, "c2", str(tmp_path / "short.flac"), None, None, 0.8, 1.0, []),
        ("cat", 1, "c3", str(tmp_path / "gone.wav"), None, None, 0.7, None, ["dog"]),
    ]
    names = ("label", "rank", "clip_id", "audio", "start_s", "end_s", "score", "margin", "labels")
    records = [dict(zip(names, row, strict=True)) | {"row_index": i} for i, row in enumerate(rows)]
    return pa.Table.from_pylist(records, schema=QUEUE_SCHEMA)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(build_review_app(write_queue(tmp_path), DecisionLog(tmp_path / "review"), "ann"))


def test_items_say_which_audio_can_be_played(client: TestClient) -> None:
    body = client.get("/api/items").json()
    assert [(i["clip_id"], i["label"], i["available"]) for i in body["items"]] == [
        ("c1", "dog", True),
        ("c2", "dog", True),
        ("c3", "cat", False),
    ]
    assert "gone.wav" in body["items"][2]["reason"] and body["labels"] == ["cat", "dog"]
    missing = client.get("/audio/2")
    assert missing.status_code == 404 and "gone.wav" in missing.json()["error"]
    assert client.get("/audio/9").status_code == 404
    assert "raymlc review" in client.get("/").text


def test_audio_is_the_segment_soundfile_reads(client: TestClient, tmp_path: Path) -> None:
    response = client.get("/audio/0")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    served, rate = sf.read(io.BytesIO(response.content), dtype="int16", always_2d=True)
    expected, _ = sf.read(tmp_path / "long.wav", start=RATE, stop=int(2.5 * RATE), dtype="int16", always_2d=True)
    assert rate == RATE and served.shape == (int(1.5 * RATE), 2)
    np.testing.assert_array_equal(served, expected)
    whole, _ = sf.read(io.BytesIO(client.get("/audio/1").content), dtype="int16")
    np.testing.assert_array_equal(whole, sf.read(tmp_path / "short.flac", dtype="int16")[0])


def test_a_long_file_is_streamed_in_blocks(tmp_path: Path) -> None:
    write_queue(tmp_path)
    chunks = list(wav_segment(str(tmp_path / "long.wav"), clip_id="c1", block_frames=1000))
    assert len(chunks) == 1 + 3 * RATE // 1000 and all(len(c) == 1000 * 2 * 2 for c in chunks[1:])
    served, _ = sf.read(io.BytesIO(b"".join(chunks)), dtype="int16")
    np.testing.assert_array_equal(served, sf.read(tmp_path / "long.wav", dtype="int16")[0])


def test_decisions_are_kept_and_bad_ones_answer_4xx_json(client: TestClient, tmp_path: Path) -> None:
    def post(**body: str):
        return client.post("/api/decisions", json={"reviewer": "ann", "decision": "present"} | body)

    first = post(clip_id="c1", label="dog")
    assert first.status_code == 200 and first.json()["reviewed"] == 1 and first.json()["total"] == 3
    post(clip_id="c2", label="dog", decision="absent")
    post(clip_id="c1", label="dog", decision="unsure")  # a change of mind replaces the earlier decision
    assert client.get("/api/decisions", params={"reviewer": "ann"}).json()["decisions"] == {
        "0": "unsure",
        "1": "absent",
    }
    assert client.get("/api/decisions", params={"reviewer": "bob"}).json()["reviewed"] == 0
    errors = {
        "unknown clip": post(clip_id="nope", label="dog"),
        "not proposed for clip": post(clip_id="c1", label="cat"),
        "decision 'maybe'": post(clip_id="c1", label="dog", decision="maybe"),
        "reviewer name": post(clip_id="c1", label="dog", reviewer="a b/c"),
        "invalid request": client.post("/api/decisions", json={"clip_id": "c1"}),
    }
    for message, response in errors.items():
        assert 400 <= response.status_code < 500 and message in response.json()["error"], message
    assert len(DecisionLog(tmp_path / "review").read()) == 3


def test_a_token_guards_the_api_and_the_audio(tmp_path: Path) -> None:
    app = build_review_app(write_queue(tmp_path), DecisionLog(tmp_path / "review"), "ann", token="s3cret")
    client = TestClient(app)
    assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for path in ("/api/items", "/audio/0"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in response.json()["error"]
    assert client.get("/api/items", headers={"Authorization": "Bearer s3cret"}).status_code == 200
