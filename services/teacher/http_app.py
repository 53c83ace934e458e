"""The HTTP side port: liveness, readiness, Prometheus metrics, model info, and TGI's API.

Served by uvicorn on the server's own event loop (`start_http` returns a task), so /readyz and
/metrics answer while a forward pass runs in the backend's worker thread. Students score over
gRPC; the TGI-compatible routes (`teacher.tgi_api`) serve tools that speak TGI's HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from tropd.teacher.config import ServerConfig
from tropd.teacher.errors import TeacherError
from tropd.teacher.http_limits import BodyLimits
from tropd.teacher.metrics import CONTENT_TYPE
from tropd.teacher.state import ServerState
from tropd.teacher.tgi_api import tgi_router

JSON_ROUTES = ("/", "/generate", "/tokenize")  # POST routes whose bodies are JSON


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI app over one server's state.

    Args:
        state: readiness flags, model facts and metrics of the server.
    Returns:
        An app with GET /livez, /readyz, /metrics, /v1/info and /v1/jobs (job token
        required when the server enforces tokens), plus TGI's POST /,
        /generate, /tokenize and GET /info; every body bounded by `max_http_body_bytes`
        and every JSON body by `max_json_depth` before a route sees it (`http_limits`).
    """
    app = FastAPI(title="tropd teacher", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        status = "draining" if state.draining else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info")
    def info() -> JSONResponse:
        if state.info is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse(state.info_dict())

    @app.get("/v1/jobs")
    def jobs(request: Request) -> JSONResponse:
        # Any known job may look (anonymous where allowed): names, weights, quotas, live queues.
        try:
            state.auth.authenticate(request.headers.get("authorization"))
        except TeacherError as exc:
            headers = {"WWW-Authenticate": "Bearer"}
            return JSONResponse({"error": exc.message}, exc.http_status, headers=headers)
        return JSONResponse(state.jobs_dict())

    app.include_router(tgi_router(state))
    config = state.config
    app.add_middleware(
        BodyLimits,  # type: ignore[arg-type]  # plain ASGI middleware
        max_body_bytes=config.max_http_body_bytes,
        max_json_depth=config.max_json_depth,
        json_paths=JSON_ROUTES,
        refuse_tokens=config.tls_cert_file is not None and config.http_plaintext,
    )
    return app


def http_tls(config: ServerConfig) -> bool:
    """True when the HTTP port serves TLS: gRPC does and `http_plaintext` is off.

    The certificate is gRPC's; client certificates are not asked for on HTTP (probes and
    Prometheus rarely hold one), bearer tokens authenticate the routes that need a job.
    """
    return config.tls_cert_file is not None and not config.http_plaintext


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the teacher server's own drain logic."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0 = any free port); uvicorn starts listening on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def start_http(
    state: ServerState, host: str, port: int
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Serve the app on the running loop.

    Args:
        state: the server state the app reports on.
        host: address to bind.
        port: port to bind (0 = any free port).
    Returns:
        The uvicorn server (set `should_exit` to stop it), its task and the bound port.
    """
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    c = state.config
    tls = http_tls(c)
    config = uvicorn.Config(
        build_app(state),
        lifespan="off",
        access_log=False,
        log_level="warning",
        ssl_certfile=c.tls_cert_file if tls else None,
        ssl_keyfile=c.tls_key_file if tls else None,
    )
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="http")
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if task.done():
        task.result()  # re-raise the start-up failure
    return server, task, bound
