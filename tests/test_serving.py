"""Ray Serve tagger: every route, every bad input (4xx + JSON error, then a good request), batching,
backpressure (503), in-place hot reload under load, metrics, serve/config.yaml, and `raymlc serve`."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from raymlc.cli import main
from raymlc.config import DemoConfig, ServeConfig, TaggerConfig
from raymlc.data import normalize_manifest
from raymlc.data.audio import decode_audio
from raymlc.data.demo import make_demo
from raymlc.serving.protocol import ServedModel, TagRow, label_entries, tag_inputs, tag_response
from raymlc.training import BUNDLE, train_local

CONFIG_YAML = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
RATE = 16000
FEATURE_DIM = 6
MAX_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wav(samples: np.ndarray, subtype: str = "PCM_16", rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, round(seconds * RATE)).astype(np.float32)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def train_audio(manifest: Path, output: Path, seed: int) -> str:
    config = TaggerConfig.model_validate(
        {
            "data": {"manifest": str(manifest)},
            "frontend": {"window_seconds": 1.0, "n_mels": 32, "n_fft": 256, "win_length": 256, "hop_length": 128},
            "model": {"kind": "cnn", "channels": [8, 16], "embedding_dim": 16},
            "train": {"epochs": 1, "batch_size": 16, "seed": seed},
            "thresholds": {"epochs": 50},
        }
    )
    train_local(config, output, log=lambda _: None)
    return str(output / BUNDLE)


def train_features(root: Path) -> str:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, FEATURE_DIM)).astype(np.float32)
    table = normalize_manifest(
        pa.table(
            {
                "clip_id": [f"c{i}" for i in range(120)],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), FEATURE_DIM),
                "labels": [[name for k, name in enumerate("xyz") if row[k] > 0] for row in features],
                "split": ["train"] * 80 + ["val"] * 20 + ["test"] * 20,
            }
        )
    )
    pq.write_table(table, root / "features.parquet")
    config = TaggerConfig.model_validate(
        {
            "data": {"manifest": str(root / "features.parquet")},
            "model": {"kind": "mlp", "hidden": [16], "embedding_dim": 8, "dropout": 0.0},
            "train": {"epochs": 3, "lr": 0.01},
            "thresholds": {"epochs": 50},
        }
    )
    train_local(config, root / "features-run", log=lambda _: None)
    return str(root / "features-run" / BUNDLE)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two tiny audio bundles (seeds 0 and 1: different versions) and a feature-vector bundle."""
    root = tmp_path_factory.mktemp("serve-bundles")
    manifest = make_demo(root / "demo", DemoConfig(n_train=40, n_val=12, n_test=12, clip_seconds=1.0))
    return {
        "audio": train_audio(manifest, root / "audio-a", seed=0),
        "audio_b": train_audio(manifest, root / "audio-b", seed=1),
        "features": train_features(root),
    }


def deploy_config(bundles: dict[str, str], port: int, audio_bundle: str) -> dict:
    """serve/config.yaml with test sizes: the tagger, a feature-vector app and a 1-slot app for overload."""
    config = yaml.safe_load(CONFIG_YAML.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    base = config["applications"][0]
    small = {"ray_actor_options": {"num_cpus": 0.25}, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}

    def app(name: str, user_config: dict, **deployment) -> dict:
        spec = {**base["deployments"][0], **small, **deployment, "user_config": user_config}
        return {**base, "name": name, "route_prefix": f"/{name}", "deployments": [spec]}

    limits = {"max_duration_s": MAX_SECONDS, "max_body_mb": 1.0, "batch_wait_timeout_s": 0.05, "max_batch_size": 8}
    config["applications"] = [
        app("tagger", {"bundle_uri": audio_bundle, **limits}),
        app("features", {"bundle_uri": bundles["features"]}),
        app(
            "overload",
            {"bundle_uri": bundles["audio"], "max_batch_size": 1, "max_duration_s": 120},
            max_ongoing_requests=1,
            max_queued_requests=1,
        ),
    ]
    return config


def deploy(config: dict) -> None:
    """Apply a Serve config the way `serve deploy` / `serve run config.yaml` do: declaratively, so that a
    changed user_config is a lightweight, in-place update (no public Python API does this)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)


@pytest.fixture(scope="module")
def server(ray_session, bundles: dict[str, str]):
    """Serve on the session's Ray at 127.0.0.1:<free port>; yields (base URL, deploy-config factory)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(deploy_config(bundles, port, bundles["audio"]))
    yield f"http://127.0.0.1:{port}", lambda audio_bundle: deploy_config(bundles, port, audio_bundle)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server[0], timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def versions(bundles: dict[str, str]) -> dict[str, str]:
    return {name: ServedModel.load(uri).version for name, uri in bundles.items()}


def post_audio(client: httpx.Client, data: bytes, app: str = "tagger", **params) -> httpx.Response:
    return client.post(f"/{app}/v1/tag", content=data, headers={"content-type": "audio/wav"}, params=params)


def assert_good_request_succeeds(client: httpx.Client) -> None:
    response = post_audio(client, wav(noise(1.0)))
    assert response.status_code == 200, response.text


# --- no Ray needed ---------------------------------------------------------------------------------------


def test_config_yaml_matches_serve_schema_and_builds() -> None:
    from ray.serve.schema import ServeDeploySchema

    from raymlc.distributed.serving import app_builder

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_YAML.read_text()))
    (app,) = config.applications
    assert app.import_path == "raymlc.distributed.serving:app_builder"
    (deployment,) = app.deployments
    ServeConfig.model_validate(deployment.user_config)
    assert deployment.autoscaling_config["max_replicas"] > 1 and deployment.max_queued_requests > 0
    assert deployment.max_ongoing_requests >= deployment.user_config["max_batch_size"]
    assert app_builder({}) is not None and app_builder({"bundle_uri": "unused"}) is not None


def test_serve_help_and_bad_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "raymlc serve" in capsys.readouterr().out
    assert main(["serve", "--bundle", str(tmp_path)]) == 2  # fails before starting Ray
    assert "not a tagger bundle" in capsys.readouterr().err


def test_label_entries_and_tag_response_order_labels_by_score() -> None:
    names = ("a", "b", "c")
    scores, thresholds = np.array([0.5, 2.0, -1.0], np.float32), np.array([1.0, 0.0, -2.0], np.float32)
    present = scores > thresholds
    assert label_entries(names, scores, thresholds, present, [2, 0]) == [
        {"name": "c", "score": -1.0, "threshold": -2.0, "present": True},
        {"name": "a", "score": 0.5, "threshold": 1.0, "present": False},
    ]
    body = tag_response(TagRow(names, scores, thresholds, present, "v1"), top_k=2, duration_s=1.5)
    assert body["model_version"] == "v1" and body["duration_s"] == 1.5 and body["tags"] == ["b", "c"]
    assert [label["name"] for label in body["labels"]] == ["b", "a"]


def test_smoke_test_fails_when_the_model_cannot_run(bundles: dict[str, str]) -> None:
    model = ServedModel.load(bundles["audio"])
    model.smoke_test()
    with torch.no_grad():
        for parameter in model.tagger.model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        model.smoke_test()


def test_a_batch_spanning_a_reload_tags_each_clip_with_its_own_model(bundles: dict[str, str]) -> None:
    old, new = ServedModel.load(bundles["audio"]), ServedModel.load(bundles["audio_b"])
    clips = [noise(1.0, seed) for seed in range(3)]
    rows = tag_inputs([(old, clips[0]), (new, clips[1]), (old, clips[2])])
    assert [row.version for row in rows] == [old.version, new.version, old.version]
    np.testing.assert_allclose(rows[1].scores, new.tagger.tag([clips[1]]).logits[0], rtol=1e-5, atol=1e-6)


# --- on Ray Serve ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tag_audio_as_multipart_and_raw_body(client: httpx.Client, bundles, versions, tmp_path: Path) -> None:
    clip = noise(3.5)  # 3.5 windows of the 1-s model: tagged window by window and pooled
    path = tmp_path / "clip.flac"
    sf.write(path, clip, RATE)
    multipart = client.post("/tagger/v1/tag", files={"file": ("clip.flac", path.read_bytes(), "audio/flac")})
    raw = client.post("/tagger/v1/tag", content=path.read_bytes(), headers={"content-type": "audio/flac"})
    assert multipart.status_code == raw.status_code == 200, multipart.text
    body = multipart.json()
    assert body == raw.json()
    assert body["model_version"] == versions["audio"] and body["duration_s"] == pytest.approx(3.5)
    expected = ServedModel.load(bundles["audio"]).tagger.tag([decode_audio(str(path), clip_id="c", sample_rate=RATE)])
    labels = {label["name"]: label for label in body["labels"]}
    names = ServedModel.load(bundles["audio"]).tagger.vocabulary.names
    assert len(labels) == len(names)
    for c, name in enumerate(names):
        assert labels[name]["score"] == pytest.approx(float(expected.logits[0, c]), rel=1e-4, abs=1e-5)
        assert labels[name]["threshold"] == pytest.approx(float(expected.thresholds[0, c]), rel=1e-4, abs=1e-5)
        assert labels[name]["present"] == bool(expected.present[0, c])
    scores = [label["score"] for label in body["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert body["tags"] == [label["name"] for label in body["labels"] if label["present"]]
    top = post_audio(client, wav(clip), top_k=2).json()
    assert [label["name"] for label in top["labels"]] == [label["name"] for label in body["labels"][:2]]


@pytest.mark.slow
def test_labels_healthz_docs(client: httpx.Client, bundles, versions) -> None:
    labels = client.get("/tagger/v1/labels").json()
    assert labels["labels"] == list(ServedModel.load(bundles["audio"]).tagger.vocabulary.names)
    assert labels["input"] == "audio" and labels["sample_rate"] == RATE and labels["max_duration_s"] == MAX_SECONDS
    assert client.get("/features/v1/labels").json()["feature_dim"] == FEATURE_DIM
    health = client.get("/tagger/healthz").json()
    assert health == {"status": "ok", "model_version": versions["audio"], "reload_error": None}
    assert client.get("/tagger/docs").status_code == 200
    assert {"/v1/tag", "/v1/tag/embedding", "/v1/labels"} <= set(client.get("/tagger/openapi.json").json()["paths"])


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_metered(client: httpx.Client) -> None:
    before = client.get("/tagger/metrics").text
    with httpx.Client(base_url=str(client.base_url), timeout=60) as other:
        data = wav(noise(1.0))
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(post_audio(other, data))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [r.status_code for r in results] == [200] * 8
    after = client.get("/tagger/metrics").text
    delta = {
        name: metric(after, name, **labels) - metric(before, name, **labels)
        for name, labels in [
            ("raymlc_requests_total", {"route": "/v1/tag", "status": "200"}),
            ("raymlc_batch_size_sum", {}),
            ("raymlc_batch_size_count", {}),
            ("raymlc_request_latency_seconds_count", {"route": "/v1/tag"}),
        ]
    }
    assert delta["raymlc_requests_total"] == delta["raymlc_request_latency_seconds_count"] == 8
    assert delta["raymlc_batch_size_sum"] == 8 and delta["raymlc_batch_size_count"] < 8  # some batches > 1
    emitted = Counter(tag for r in results for tag in r.json()["tags"])
    for label, count in emitted.items():
        tags = [metric(text, "raymlc_tags_total", label=label) for text in (before, after)]
        assert tags[1] - tags[0] == count
    assert metric(after, "raymlc_model_info", version=results[0].json()["model_version"]) == 1


BAD_AUDIO = {
    "non-audio bytes": (lambda: {"files": {"file": ("x.wav", b"this is not audio")}}, 400, "unusable audio"),
    "truncated wav": (lambda: raw(wav(noise(1.0))[:20000]), 400, "truncated"),
    "empty body": (lambda: raw(b""), 400, "zero-length"),
    "zero-frame wav": (lambda: raw(wav(np.zeros(0, np.float32))), 400, "zero-length"),
    "nan samples": (lambda: raw(wav(np.full(800, np.nan, np.float32), "FLOAT")), 400, "NaN or Inf"),
    "inf samples": (lambda: raw(wav(np.r_[noise(0.1), np.inf].astype(np.float32), "FLOAT")), 400, "NaN or Inf"),
    "over max duration": (lambda: raw(wav(noise(MAX_SECONDS + 1))), 413, "at most 5 s"),
    "costly sample rate": (lambda: raw(wav(noise(0.1), rate=44101)), 400, "unsupported sample rate 44101 Hz"),
    "body over limit": (lambda: raw(b"\0" * (3 * 2**20)), 413, "1 MB limit"),
    "text content type": (lambda: raw(wav(noise(1.0)), "text/plain"), 415, "Content-Type 'text/plain'"),
    "json content type": (lambda: raw(b"{}", "application/json"), 415, "multipart/form-data"),
    "missing file field": (lambda: {"files": {"audio": ("x.wav", wav(noise(1.0)))}}, 400, "field 'file'"),
    "file field as text": (lambda: {"files": {"other": ("x", b"")}, "data": {"file": "abc"}}, 400, "file upload"),
    "broken multipart": (lambda: raw(b"--x\r\n", "multipart/form-data"), 400, "boundary"),
    "top_k zero": (lambda: {**raw(wav(noise(1.0))), "params": {"top_k": 0}}, 422, "top_k"),
}


def raw(data: bytes, content_type: str = "audio/wav") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_answers_4xx_json_then_good_request_succeeds(client: httpx.Client, case: str) -> None:
    make_request, status, message = BAD_AUDIO[case]
    response = client.post("/tagger/v1/tag", **make_request())
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert_good_request_succeeds(client)


@pytest.mark.slow
def test_embedding_route(client: httpx.Client, versions) -> None:
    vector = np.random.default_rng(3).normal(size=FEATURE_DIM).tolist()
    response = client.post("/features/v1/tag/embedding", json={"embedding": vector}, params={"top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == versions["features"] and body["duration_s"] is None and len(body["labels"]) == 2
    cases = [
        ({"json": {"embedding": vector[:-1]}}, 400, f"this model takes {FEATURE_DIM}"),
        ({"content": '{"embedding": [NaN, 1, 1, 1, 1, 1]}'}, 400, "NaN or Inf"),
        ({"content": '{"embedding": [Infinity, 1, 1, 1, 1, 1]}'}, 400, "NaN or Inf"),
        ({"json": {"embedding": [1e300] * FEATURE_DIM}}, 400, "overflow"),
        ({"json": {"embedding": [None] * FEATURE_DIM}}, 422, "embedding.0"),
        ({"json": {"vector": vector}}, 422, "embedding: Field required"),
        ({"content": "{not json"}, 422, "Invalid JSON"),
        ({"content": "{}", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    ]
    for request, status, message in cases:
        request.setdefault("headers", {"content-type": "application/json"})
        response = client.post("/features/v1/tag/embedding", **request)
        assert response.status_code == status, (request, response.text)
        assert message in response.json()["error"], response.text
        assert client.post("/features/v1/tag/embedding", json={"embedding": vector}).status_code == 200
    wrong_route = client.post("/features/v1/tag", content=wav(noise(1.0)), headers={"content-type": "audio/wav"})
    assert wrong_route.status_code == 400 and "/v1/tag/embedding" in wrong_route.json()["error"]
    wrong_route = client.post("/tagger/v1/tag/embedding", json={"embedding": vector})
    assert wrong_route.status_code == 400 and "POST the audio file to /v1/tag" in wrong_route.json()["error"]
    assert_good_request_succeeds(client)


@pytest.mark.slow
def test_overload_answers_503_never_500(client: httpx.Client) -> None:
    data = wav(noise(30.0))  # 30 windows: each request keeps the single slot busy for a while
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            statuses.append(post_audio(own, data, app="overload").status_code)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(statuses)
    assert set(counts) <= {200, 503} and counts[200] >= 1 and counts[503] >= 1, counts
    assert post_audio(client, data, app="overload").status_code == 200


@pytest.mark.slow
def test_hot_reload_swaps_the_model_in_place_without_dropping_requests(client, server, bundles, versions) -> None:
    _, config_for = server
    requests_before = metric(client.get("/tagger/metrics").text, "raymlc_requests_total", route="/v1/tag")
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(3)]

    def hammer(log: list[tuple[int, str]]) -> None:
        data = wav(noise(2.0))
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            while not stop.is_set():
                response = post_audio(own, data)
                ok = response.status_code == 200
                log.append((response.status_code, response.json()["model_version"] if ok else response.text))

    threads = [threading.Thread(target=hammer, args=(log,)) for log in seen]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        deploy(config_for(bundles["audio_b"]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == versions["audio_b"] for log in seen for _, v in log[-3:]):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    try:
        responses = [entry for log in seen for entry in log]
        assert {status for status, _ in responses} == {200}, Counter(responses)
        assert {version for _, version in responses} == {versions["audio"], versions["audio_b"]}
        for log in seen:  # per client, requests are sequential: once the new model answers, the old never does
            order = [version for _, version in log]
            assert order == sorted(order, key=lambda version: version == versions["audio_b"])
        metrics = client.get("/tagger/metrics").text  # the same replica: its counters kept counting
        assert metric(metrics, "raymlc_requests_total", route="/v1/tag") >= requests_before + len(responses)
        assert metric(metrics, "raymlc_model_info", version=versions["audio_b"]) == 1
        assert metric(metrics, "raymlc_model_info", version=versions["audio"]) == 0
        assert client.get("/tagger/healthz").json()["model_version"] == versions["audio_b"]
    finally:
        deploy(config_for(bundles["audio"]))


@pytest.mark.slow
def test_a_bundle_that_fails_to_load_leaves_the_serving_model_in_place(client, server, bundles, versions, tmp_path):
    _, config_for = server
    failures = metric(client.get("/tagger/metrics").text, "raymlc_reload_failures_total")
    try:
        deploy(config_for(str(tmp_path / "missing-bundle")))  # an in-place update that cannot be applied
        health = client.get("/tagger/healthz").json()
        assert health["model_version"] == versions["audio"] and "missing-bundle" in health["reload_error"]
        assert_good_request_succeeds(client)
        assert metric(client.get("/tagger/metrics").text, "raymlc_reload_failures_total") == failures + 1
    finally:
        deploy(config_for(bundles["audio"]))
    assert client.get("/tagger/healthz").json()["reload_error"] is None


def process_tree(root: int) -> set[int]:
    """`root` and all its descendant processes."""
    parents = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n"):
        if line.strip():
            pid, ppid = map(int, line.split())
            parents[pid] = ppid
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_raymlc_serve_runs_until_sigterm_and_leaves_no_processes(bundles: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "raymlc.cli", "serve", "--bundle", bundles["audio"], "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/tag", content=wav(noise(1.0)), headers={"content-type": "audio/wav"}
        )
        assert response.status_code == 200, response.text
        tree = process_tree(process.pid)
        assert len(tree) > 3  # the CLI, GCS, raylet, workers...
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopping: shutting down Serve and Ray" in output
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(running(pid) for pid in tree):
        time.sleep(0.5)
    assert not [pid for pid in tree if running(pid)], "processes left behind"


def test_a_token_guards_v1_and_leaves_health_and_metrics_open(bundles: dict[str, str], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from raymlc.serving.app import DirectBackend, build_api

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    client = TestClient(build_api(DirectBackend(ServeConfig(bundle_uri=bundles["audio"], token_file=str(token_file)))))
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = client.get("/v1/labels", headers=headers)
        assert response.status_code == 401 and "bearer token" in response.json()["error"]
    assert client.post("/v1/tag", content=b"x", headers={"Content-Type": "audio/wav"}).status_code == 401
    assert client.get("/v1/labels", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert 'raymlc_requests_total{route="unmatched",status="401"}' in client.get("/metrics").text
