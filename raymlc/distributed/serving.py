"""Ray Serve deployment of the tagger HTTP API (`raymlc.serving.app`).

Each replica builds the FastAPI app around itself: requests are parsed and decoded in the replica, then
grouped by `@serve.batch` into one `Tagger.tag` call. The deployment's `user_config` is a `ServeConfig`;
`reconfigure` applies a new one in place: a new `bundle_uri` swaps the model (requests already parsed finish
on the model they started with; a bundle that fails to load leaves the serving one in place). `check_health`
tags a silent clip. Backpressure is Serve's own: beyond `max_ongoing_requests` per replica and
`max_queued_requests` per proxy the proxy answers 503.

`app_builder` is the `import_path` of serve/config.yaml (`serve deploy`); `run_local` is `raymlc serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import ray
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import metrics as ray_metrics
from ray.serve.config import AutoscalingConfig

from raymlc.config import ServeConfig
from raymlc.serving.app import BATCH_BUCKETS, LATENCY_BUCKETS, TaggerMetrics, build_api
from raymlc.serving.auth import load_token
from raymlc.serving.protocol import ServedModel, TagRow, tag_inputs

APP_NAME = "tagger"
logger = logging.getLogger("ray.serve")


class RayTaggerMetrics(TaggerMetrics):
    """`TaggerMetrics` (this replica's /metrics) that also records through `ray.serve.metrics`, which Ray
    exports from every node's metrics endpoint with deployment/replica tags: the view to scrape when
    there are several replicas (names gain Ray's `ray_` prefix, e.g. `ray_raymlc_requests_total`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ray_requests = ray_metrics.Counter(
            "raymlc_requests", "HTTP requests by route and status", tag_keys=("route", "status")
        )
        self.ray_latency = ray_metrics.Histogram(
            "raymlc_request_latency_seconds", "Request latency in the replica", list(LATENCY_BUCKETS), ("route",)
        )
        self.ray_batch_size = ray_metrics.Histogram("raymlc_batch_size", "Clips per model call", list(BATCH_BUCKETS))
        self.ray_tags = ray_metrics.Counter("raymlc_tags", "Present tags emitted, by label", tag_keys=("label",))
        self.ray_model = ray_metrics.Gauge("raymlc_model_info", "1 for the model version served", tag_keys=("version",))
        self.ray_reload_failures = ray_metrics.Counter("raymlc_reload_failures", "Hot reloads that failed")

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        super().observe_request(route, status, seconds)
        self.ray_requests.inc(tags={"route": route, "status": str(status)})
        self.ray_latency.observe(seconds, tags={"route": route})

    def observe_batch(self, size: int) -> None:
        super().observe_batch(size)
        self.ray_batch_size.observe(size, tags={})

    def count_tags(self, names: Iterable[str]) -> None:
        names = list(names)
        super().count_tags(names)
        for name in names:
            self.ray_tags.inc(tags={"label": name})

    def count_reload_failure(self) -> None:
        super().count_reload_failure()
        self.ray_reload_failures.inc(tags={})

    def set_model(self, version: str) -> None:
        if self.version is not None and self.version != version:
            self.ray_model.set(0, tags={"version": self.version})
        super().set_model(version)
        self.ray_model.set(1, tags={"version": version})


def load_and_probe(uri: str) -> ServedModel:
    """Load a bundle and tag a silent clip with it: a model that cannot run never replaces one that can."""
    model = ServedModel.load(uri)
    model.smoke_test()
    return model


@serve.deployment(
    name="Tagger",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=32,
    max_queued_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress()
class TaggerDeployment:
    """One replica: the tagger API (`raymlc.serving.app.build_api`) around a dynamically batched model."""

    def __init__(self) -> None:
        self.config: ServeConfig | None = None
        self.model: ServedModel | None = None
        self.token: str | None = None
        self.reload_error: str | None = None
        self.metrics = RayTaggerMetrics()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a `ServeConfig` in place; a new bundle_uri is loaded and probed before it is swapped in.

        When the config or its bundle fails, a replica that is already serving keeps its model and config and
        reports the failure (`/healthz` reload_error, `raymlc_reload_failures_total`, the replica log):
        raising here would make Serve replace the replica with ones that fail the same way, i.e. an outage.
        """
        try:
            config = ServeConfig.model_validate(user_config)
            token = load_token(config.token_file)
            model = self.model
            if model is None or model.uri != config.bundle_uri:
                model = await asyncio.to_thread(load_and_probe, config.bundle_uri)
        except Exception as error:
            if self.model is None:
                raise  # nothing to keep serving: the deployment fails, visibly
            self.reload_error = f"{type(error).__name__}: {error}"
            self.metrics.count_reload_failure()
            logger.error("reconfigure failed; still serving %s: %s", self.model.version, self.reload_error)
            return
        torch.set_num_threads(config.torch_threads)
        self.tag_batch.set_max_batch_size(config.max_batch_size)
        self.tag_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.model, self.config, self.token, self.reload_error = model, config, token, None
        self.metrics.set_model(model.version)

    async def check_health(self) -> None:
        """Raise (an unhealthy replica is replaced) unless the model tags a silent clip."""
        if self.model is None:
            raise RuntimeError("no model loaded: set user_config.bundle_uri")
        await asyncio.to_thread(self.model.smoke_test)

    async def infer(self, model: ServedModel, item: np.ndarray) -> TagRow:
        return await self.tag_batch((model, item))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def tag_batch(self, items: list[tuple[ServedModel, np.ndarray]]) -> list[TagRow]:
        self.metrics.observe_batch(len(items))
        return await asyncio.to_thread(tag_inputs, items)


def build_app(config: ServeConfig, **options: Any) -> serve.Application:
    """The tagger application with `config` as user_config; `options` override deployment options
    (num_replicas, autoscaling_config, max_ongoing_requests, max_queued_requests, ray_actor_options...)."""
    return TaggerDeployment.options(user_config=config.model_dump(), **options).bind()


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`import_path` of serve/config.yaml. `args` are `ServeConfig` fields, or empty when the config file
    gives them as the deployment's `user_config` instead (the form `serve deploy` updates in place)."""
    return build_app(ServeConfig.model_validate(args)) if args else TaggerDeployment.bind()


def run_local(
    config: ServeConfig, host: str, port: int, max_replicas: int = 1, log: Callable[[str], None] = print
) -> None:
    """Serve `config` on a Ray started in this process until SIGINT or SIGTERM, then shut Serve and Ray down."""
    ServedModel.load(config.bundle_uri)  # fail on a bad bundle or token file before starting anything
    load_token(config.token_file)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    stop = threading.Event()
    previous = {}
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        # After ray.init, whose own SIGTERM handler would otherwise end the process without cleaning up.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        serve.start(http_options={"host": host, "port": port})
        autoscaling = AutoscalingConfig(
            min_replicas=1, max_replicas=max_replicas, target_ongoing_requests=16, upscale_delay_s=5
        )
        serve.run(build_app(config, autoscaling_config=autoscaling), name=APP_NAME, route_prefix="/")
        log(f"serving {config.bundle_uri} at http://{host}:{port}/v1/tag (API docs at /docs); Ctrl-C stops")
        stop.wait()
        log("stopping: shutting down Serve and Ray")
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
