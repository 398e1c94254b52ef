"""The tagger's HTTP API (FastAPI, no Ray): routes, JSON errors, a request-body limit and Prometheus metrics
around a `TaggerBackend` that owns the model.

Ray Serve (`raymlc.distributed.serving`) builds this app in each replica around a batching backend;
`DirectBackend` serves it from one plain process (uvicorn), the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Annotated, Protocol

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import raymlc
from raymlc.config import ServeConfig
from raymlc.serving.auth import BearerAuth, load_token
from raymlc.serving.protocol import (
    RequestError,
    ServedModel,
    TagRow,
    body_kind,
    decode_upload,
    parse_embedding,
    tag_inputs,
    tag_response,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DESCRIPTION = (
    "Multi-label audio tagging with per-clip adaptive thresholds. Scores and thresholds are logits "
    "(probability = sigmoid(score)); a label is present iff its score exceeds its threshold. "
    'Errors are JSON: {"error": "what was wrong"}.'
)
AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "audio file"}},
                }
            },
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class TaggerMetrics:
    """The service's Prometheus metrics in a registry of their own; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "raymlc_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "raymlc_request_latency_seconds",
            "Request latency in this process, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "raymlc_batch_size", "Clips per model call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.tags = Counter("raymlc_tags", "Present tags emitted, by label", ["label"], registry=self.registry)
        self.model = Gauge("raymlc_model_info", "1 for the model version served", ["version"], registry=self.registry)
        self.reload_failures = Counter("raymlc_reload_failures", "Hot reloads that failed", registry=self.registry)
        self.version: str | None = None

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def count_tags(self, names: Iterable[str]) -> None:
        for name in names:
            self.tags.labels(name).inc()

    def count_reload_failure(self) -> None:
        self.reload_failures.inc()

    def set_model(self, version: str) -> None:
        if self.version is not None and self.version != version:
            self.model.remove(self.version)
        self.model.labels(version).set(1)
        self.version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TaggerBackend(Protocol):
    """What the routes need: the current model and config (None until loaded), the bearer token (None: open),
    the last failed reload (None once a reload succeeds), metrics, and inference."""

    config: ServeConfig | None
    model: ServedModel | None
    token: str | None
    reload_error: str | None
    metrics: TaggerMetrics

    async def infer(self, model: ServedModel, item: np.ndarray) -> TagRow: ...


class DirectBackend:
    """One model in this process; each request is tagged on its own (no batching) in a worker thread."""

    def __init__(self, config: ServeConfig) -> None:
        torch.set_num_threads(config.torch_threads)
        self.config: ServeConfig | None = config
        self.token = load_token(config.token_file)
        self.metrics = TaggerMetrics()
        self.model: ServedModel | None = ServedModel.load(config.bundle_uri)
        self.reload_error: str | None = None
        self.metrics.set_model(self.model.version)

    async def infer(self, model: ServedModel, item: np.ndarray) -> TagRow:
        (row,) = await asyncio.to_thread(tag_inputs, [(model, item)])
        self.metrics.observe_batch(1)
        return row


class LabelScore(BaseModel):
    name: str
    score: float = Field(description="logit")
    threshold: float = Field(description="this clip's adaptive threshold (logit)")
    present: bool


class TagResponse(BaseModel):
    model_version: str
    duration_s: float | None = Field(description="clip duration (audio route), null for embeddings")
    tags: list[str] = Field(description="present labels, highest score first")
    labels: list[LabelScore] = Field(description="labels by descending score (the top_k first when given)")


class LabelsResponse(BaseModel):
    model_version: str
    labels: list[str]
    input: str = Field(description="'audio' (POST /v1/tag) or 'features' (POST /v1/tag/embedding)")
    sample_rate: int | None
    window_s: float | None
    feature_dim: int | None
    max_duration_s: float
    bundle_created: str | None


class HealthResponse(BaseModel):
    status: str
    model_version: str
    reload_error: str | None = Field(description="why the last hot reload failed (the old model still serves)")


class EmbeddingRequest(BaseModel):
    embedding: list[float] = Field(description="one feature vector, as long as the model's feature_dim")


TopK = Annotated[int | None, Query(ge=1, description="return only the k highest-scoring labels")]


def build_api(backend: TaggerBackend) -> FastAPI:
    """The FastAPI app (OpenAPI at /docs) serving `backend`'s model."""
    app = FastAPI(title="raymlc tagger", version=raymlc.__version__, description=DESCRIPTION)
    app.add_middleware(_BodyLimit, backend=backend)
    app.add_middleware(BearerAuth, token=lambda: backend.token, protected=("/v1/",))  # /healthz, /metrics open
    app.add_middleware(_RequestMetrics, metrics=backend.metrics)  # outermost: counts 401s, 413s and 500s too
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    def current() -> tuple[ServedModel, ServeConfig]:
        model, config = backend.model, backend.config
        if model is None or config is None:
            raise RequestError(503, "no model loaded yet")
        return model, config

    def respond(row: TagRow, top_k: int | None, duration_s: float | None) -> dict:
        body = tag_response(row, top_k, duration_s)
        backend.metrics.count_tags(body["tags"])
        return body

    @app.post("/v1/tag", response_model=TagResponse, openapi_extra=AUDIO_BODY)
    async def tag(request: Request, top_k: TopK = None) -> dict:
        """Tag one audio file: multipart field `file`, or the raw body with an audio/* Content-Type.
        Clips longer than the model's window are tagged window by window and pooled."""
        model, config = current()
        if not model.tagger.is_audio:
            raise RequestError(400, "this model tags feature vectors: POST them to /v1/tag/embedding")
        data = await read_audio(request)
        rate = model.tagger.sample_rate
        wave = await asyncio.to_thread(decode_upload, data, rate, config.max_duration_s)
        return respond(await backend.infer(model, wave), top_k, len(wave) / rate)

    @app.post(
        "/v1/tag/embedding",
        response_model=TagResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
            }
        },
    )
    async def tag_embedding(request: Request, top_k: TopK = None) -> dict:
        """Tag one precomputed feature vector (models trained on a `features` manifest)."""
        model, _ = current()
        if model.tagger.is_audio:
            raise RequestError(400, "this model tags audio: POST the audio file to /v1/tag")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise RequestError(415, f"unsupported Content-Type {media_type or '(none)'!r}: send application/json")
        try:
            payload = EmbeddingRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestError(422, f"invalid JSON body: {_describe(error.errors())}") from None
        vector = parse_embedding(payload.embedding, model.tagger.metadata["feature_dim"])
        return respond(await backend.infer(model, vector), top_k, None)

    @app.get("/v1/labels", response_model=LabelsResponse)
    async def labels() -> dict:
        """The model's labels (output order) and what it takes as input."""
        model, config = current()
        tagger = model.tagger
        return {
            "model_version": model.version,
            "labels": list(tagger.vocabulary.names),
            "input": "audio" if tagger.is_audio else "features",
            "sample_rate": tagger.sample_rate if tagger.is_audio else None,
            "window_s": tagger.config.frontend.window_seconds if tagger.is_audio else None,
            "feature_dim": tagger.metadata["feature_dim"],
            "max_duration_s": config.max_duration_s,
            "bundle_created": tagger.metadata.get("created"),
        }

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict:
        """200 with the model version once a model is loaded, 503 before."""
        model, _ = current()
        return {"status": "ok", "model_version": model.version, "reload_error": backend.reload_error}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """This process's metrics in Prometheus text format."""
        return Response(backend.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def read_audio(request: Request) -> bytes:
    """The uploaded file's bytes: multipart field `file`, or the raw body of an audio/* request."""
    if body_kind(request.headers.get("content-type")) == "raw":
        return await request.body()
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if upload is None:
            raise RequestError(400, f"missing multipart field 'file' (got fields: {sorted(form) or 'none'})")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "multipart field 'file' must be a file upload, not a text value")
        return await upload.read()


def _describe(errors: Iterable[dict]) -> str:
    return "; ".join(f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in errors)


async def _request_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    return JSONResponse({"error": error.message}, status_code=error.status)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"error": _describe(error.errors())}, status_code=422)


async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


class _BodyLimit:
    """413 for a request body over the backend's `max_body_mb`: by Content-Length before reading, else as
    soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, backend: TaggerBackend) -> None:
        self.app = app
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.backend.config
        if scope["type"] != "http" or config is None:
            await self.app(scope, receive, send)
            return
        limit = round(config.max_body_mb * 2**20)
        declared = dict(scope["headers"]).get(b"content-length")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, f"request body over the {config.max_body_mb:g} MB limit")
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body over the {config.max_body_mb:g} MB limit")
            return message

        await self.app(scope, limited_receive, send)


class _RequestMetrics:
    """Counts each HTTP request by route template and status, and observes its latency."""

    def __init__(self, app: ASGIApp, metrics: TaggerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, status, time.perf_counter() - started)
