"""The review page (`raymlc review`): a FastAPI app that serves a run's review queue, streams each item's audio
segment and records a reviewer's decisions as they are made (`raymlc.reviewing.DecisionLog`).

    GET  /                  the page (plain HTML and JavaScript, `review.html`)
    GET  /api/items         the queue: one item per (clip, label), with whether its audio can be played
    GET  /api/decisions     ?reviewer=NAME: that reviewer's current decisions and progress
    POST /api/decisions     {"clip_id", "label", "decision": present|absent|unsure, "reviewer"}
    GET  /audio/{item}      the item's segment as WAV, streamed (a long file is never read whole)
    GET  /healthz

Errors are JSON (`{"error": ...}`): 404 for an unknown clip, label or item, 422 for a bad decision or body.
With a token (`raymlc.serving.auth`), `/api/*` and `/audio/*` need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from raymlc.data.audio import AudioError, wav_segment
from raymlc.data.files import exists
from raymlc.reviewing import Decision, DecisionLog, ReviewError, check_reviewer, latest
from raymlc.serving.auth import BearerAuth

ITEM_FIELDS = ("label", "rank", "clip_id", "audio", "start_s", "end_s", "score", "margin", "labels")


class DecisionRequest(BaseModel):
    clip_id: str
    label: str
    decision: str
    reviewer: str


def queue_items(queue: pa.Table) -> list[dict]:
    """The queue's rows as items (`id` = position), each with `available` and, when not, the `reason`."""
    items = [{"id": i} | {key: row.get(key) for key in ITEM_FIELDS} for i, row in enumerate(queue.to_pylist())]
    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store lookups are slow one by one
        found = list(pool.map(lambda item: bool(item["audio"]) and exists(item["audio"]), items))
    for item, available in zip(items, found, strict=True):
        item["available"] = available
        item["reason"] = None if available else f"audio not found: {item['audio'] or '(no path)'}"
    return items


def build_review_app(queue: pa.Table, log: DecisionLog, reviewer: str, token: str | None = None) -> FastAPI:
    """The review app over `queue`, writing to `log`; `reviewer` is the page's default reviewer name."""
    items = queue_items(queue)
    by_key = {(item["clip_id"], item["label"]): item for item in items}
    clips = {item["clip_id"] for item in items}
    page = resources.files("raymlc.serving").joinpath("review.html").read_text()
    app = FastAPI(title="raymlc review", docs_url=None, redoc_url=None)
    app.add_middleware(BearerAuth, token=lambda: token, protected=("/api/", "/audio/"))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"invalid request: {fields}"}, status_code=422)

    def progress(name: str) -> dict:
        decided = {key: d.decision for key, d in latest(log.read(), name).items() if key in by_key}
        decisions = {str(by_key[key]["id"]): decision for key, decision in decided.items()}
        return {"reviewer": name, "decisions": decisions, "reviewed": len(decisions), "total": len(items)}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "items": len(items)}

    @app.get("/api/items")
    async def list_items() -> dict:
        return {"items": items, "labels": sorted({item["label"] for item in items}), "default_reviewer": reviewer}

    @app.get("/api/decisions")
    async def decisions(reviewer: str) -> dict:
        try:
            return progress(check_reviewer(reviewer))
        except ReviewError as error:
            raise HTTPException(422, str(error)) from None

    @app.post("/api/decisions")
    async def decide(body: DecisionRequest) -> dict:
        if body.clip_id not in clips:
            raise HTTPException(404, f"unknown clip {body.clip_id!r}: not in this review queue")
        if (body.clip_id, body.label) not in by_key:
            raise HTTPException(404, f"label {body.label!r} is not proposed for clip {body.clip_id!r}")
        try:
            log.append(Decision.now(body.clip_id, body.label, body.decision, body.reviewer))
        except ReviewError as error:
            raise HTTPException(422, str(error)) from None
        return progress(body.reviewer)

    @app.get("/audio/{item_id}")
    async def audio(item_id: int) -> StreamingResponse:
        if not 0 <= item_id < len(items):
            raise HTTPException(404, f"unknown item {item_id}")
        item = items[item_id]
        if not item["available"]:
            raise HTTPException(404, item["reason"])
        try:
            chunks = wav_segment(item["audio"], clip_id=item["clip_id"], start_s=item["start_s"], end_s=item["end_s"])
        except AudioError as error:
            raise HTTPException(404, f"audio unavailable: {error.reason}") from None
        return StreamingResponse(chunks, media_type="audio/wav")

    return app
