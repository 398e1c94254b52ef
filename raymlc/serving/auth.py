"""Optional bearer-token auth for raymlc's HTTP apps (the tagger service and the review page).

The token comes from a file (`token_file`, e.g. a mounted secret) or else the `RAYMLC_API_TOKEN` environment
variable; with neither, auth is off. Requests to the protected path prefixes must then carry
`Authorization: Bearer <token>`; others get 401 with a JSON error and `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the web framework is the `serve` extra; this module imports without it
    from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "RAYMLC_API_TOKEN"


def load_token(token_file: str | None = None) -> str | None:
    """The configured token: `token_file`'s content (stripped), else `$RAYMLC_API_TOKEN`, else None (auth off)."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"{token_file}: the token file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


class BearerAuth:
    """ASGI middleware: 401 JSON for requests to `protected` path prefixes without the bearer token; `token`
    gives the current token (None: auth off), so a reconfigured service can change it."""

    def __init__(self, app: ASGIApp, token: Callable[[], str | None], protected: tuple[str, ...]) -> None:
        self.app, self.token, self.protected = app, token, protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.token() if scope["type"] == "http" and scope["path"].startswith(self.protected) else None
        if token is None:
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            await self.app(scope, receive, send)
            return
        reason = "wrong bearer token" if given else "missing bearer token (Authorization: Bearer <token>)"
        body = json.dumps({"error": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
