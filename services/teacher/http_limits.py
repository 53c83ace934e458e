"""Bounds on what an HTTP request may make the teacher do before any route sees it.

`BodyLimits` is plain ASGI middleware in front of every route of the side port:
* the body is read here, up to `max_body_bytes`: a larger Content-Length is refused before one
  byte is read, and a chunked body is cut off as soon as it passes the limit (413, naming the
  limit), so no route ever buffers, parses or tokenizes an oversized body;
* on the JSON routes, the body is parsed here once: not JSON, NaN/Infinity, or nesting deeper
  than `max_json_depth` is refused with 422 (Python's parser raises RecursionError near depth
  1,000, and every level costs the validators below a frame); the parsed value travels to the
  route in `request.state.json_body`.
With `refuse_tokens` (a TLS server whose HTTP port was left plaintext, `http_plaintext`), any
request carrying an `authorization` header is refused (403) before it is read: a job token must
not travel in the clear beside a gRPC port that encrypts it.
Refusals use TGI's error body `{"error", "error_type"}`, as the routes' own errors do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_BODY = "json_body"  # key of the parsed body in the request's state


class BodyRefused(Exception):
    """The body breaks a limit: `status` and a message naming the limit."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, [] and {} are 1), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Collection[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a JSON body within the depth limit.

    Raises:
        BodyRefused: 422 for a body that is not JSON (NaN and Infinity included) or nests deeper
            than `max_depth`.
    """
    too_deep = BodyRefused(
        422, f"Input validation error: body nests deeper than max_json_depth = {max_depth}",
        "validation",
    )  # fmt: skip
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"Input validation error: body is not JSON: {exc}"
        raise BodyRefused(422, message, "validation") from None
    if json_depth(value) > max_depth:
        raise too_deep
    return value


class BodyLimits:
    """ASGI middleware: the size limit on every route, the JSON checks on `json_paths`."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_json_depth: int,
        json_paths: Collection[str],
        refuse_tokens: bool = False,
    ) -> None:
        self.app = app
        self.refuse_tokens = refuse_tokens
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.json_paths = frozenset(json_paths)

    def _too_large(self, got: str) -> BodyRefused:
        return BodyRefused(
            413,
            f"request body of {got} bytes is larger than max_http_body_bytes = "
            f"{self.max_body_bytes}",
            "payload_too_large",
        )

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise BodyRefused(400, "Content-Length is not a number", "validation") from None
                if declared > self.max_body_bytes:
                    raise self._too_large(str(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(f"at least {size}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if self.refuse_tokens and any(k == b"authorization" for k, _ in scope["headers"]):
                raise BodyRefused(
                    403,
                    "job tokens are refused on this plaintext HTTP port (http_plaintext with "
                    "TLS on gRPC): send them over gRPC with TLS",
                    "permission_denied",
                )
            body = await self._read(scope, receive)
            if scope["path"] in self.json_paths and scope["method"] == "POST":
                parsed = parse_json(body, self.max_json_depth)
                scope.setdefault("state", {})[JSON_BODY] = parsed
        except BodyRefused as refused:
            await _respond(send, refused)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _respond(send: Send, refused: BodyRefused) -> None:
    payload = json.dumps({"error": refused.message, "error_type": refused.error_type}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refused.status,
            # The unread rest of a refused body must not be taken as the next request.
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
