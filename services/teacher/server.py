"""The teacher server's lifecycle: bind, load, warm, serve, drain, stop.

`TeacherServer` owns one gRPC (`grpc.aio`) server, the HTTP side port, the scheduler and the
backend, all on one event loop; the backend runs in one worker thread. Health
(grpc.health.v1, services "" and "tropd.teacher.v1.Teacher") says NOT_SERVING until the model is
loaded and warmed, then SERVING; on stop it goes NOT_SERVING, new calls get UNAVAILABLE, queued
and in-flight work drains for up to `drain_grace_s`, then everything closes. Job tokens come
from `tokens_file` (`teacher.auth`), re-read when the file changes (polled every
`TOKENS_POLL_S`) or on SIGHUP; gRPC runs over TLS (mutual with `tls_client_ca_file`) when a
certificate is configured, and then the HTTP side port serves TLS with the same certificate
(or, with `http_plaintext`, stays plain and refuses bearer tokens).

    tropd-teacher serve --model PATH          # the CLI (SIGTERM/SIGINT -> drain, exit 0)
    handle = start_server(config)             # in-process, in a background thread
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tropd.teacher.auth import Authenticator
from tropd.teacher.backends.base import Backend
from tropd.teacher.config import ServerConfig, message_limits
from tropd.teacher.http_app import http_tls, start_http
from tropd.teacher.metrics import TeacherMetrics
from tropd.teacher.scheduler import MonotonicClock, Scheduler, SchedulerConfig
from tropd.teacher.servicer import TeacherServicer, add_to_server
from tropd.teacher.state import ServerState
from tropd.wire.v1 import teacher_pb2 as pb

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Teacher"].full_name  # "tropd.teacher.v1.Teacher"
HEALTH_SERVICES = ("", SERVICE_NAME)
TOKENS_POLL_S = 2.0  # how often the tokens file's mtime/size/inode is checked for a reload


def _load_backend(config: ServerConfig) -> Backend:
    # Imported here: the registry pulls in torch/transformers only when a server starts.
    from tropd.teacher.backends import load_backend

    if config.backend == "tgi":
        return load_backend(
            "tgi",
            url=config.tgi_url,
            model_path=config.model,
            max_concurrency=config.tgi_max_concurrency,
            token=config.tgi_token,
            timeout_s=config.tgi_timeout_s,
        )
    return load_backend(
        config.backend, model_path=config.model, device=config.device, dtype=config.dtype
    )


class TeacherServer:
    """One teacher server on the running event loop."""

    def __init__(self, config: ServerConfig, backend: Backend | None = None) -> None:
        """Args:
        config: the resolved configuration.
        backend: an already-built backend (tests, benchmarks); None loads `config.backend`.
        """
        self.config = config
        auth = Authenticator(config.tokens_file, config.allow_anonymous)  # TokensFileError
        metrics = TeacherMetrics(job_label=config.metrics_job_label)
        self.state = ServerState(config, metrics, auth=auth)
        self.grpc_port = 0
        self.http_port = 0
        self._backend = backend
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="teacher-backend")
        self._clock = MonotonicClock()
        self._scheduler: Scheduler | None = None
        self._servicer: TeacherServicer | None = None
        self._health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def backend(self) -> Backend | None:
        return self._backend

    async def start(self) -> None:
        """`bind`, then `load`: returns once the server is SERVING.

        Raises:
            RuntimeError: a port cannot be bound.
            Exception: whatever the backend raises while loading or warming up.
        """
        await self.bind()
        await self.load()

    async def bind(self) -> None:
        """Bind and start both ports; health says NOT_SERVING and calls get UNAVAILABLE."""
        await self._start_grpc()
        server, self._http_task, self.http_port = await start_http(
            self.state, self.config.host, self.config.http_port
        )
        self._http = server
        if self.state.auth.tokens_file is None:
            log.warning("no tokens file: every caller is served as job 'anonymous' (no auth)")
        else:
            auth = self.state.auth
            log.info(
                "job tokens from %s: %d jobs, anonymous calls %s",
                auth.tokens_file, len(auth.jobs), "allowed" if auth.allow_anonymous else "refused",
            )  # fmt: skip
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_tokens())
        tls = "mutual TLS" if self.config.tls_client_ca_file else "TLS"
        log.info(
            "listening on %s: grpc %d (%s), http %d (%s)",
            self.config.host, self.grpc_port, tls if self.config.tls_cert_file else "plaintext",
            self.http_port, "TLS" if http_tls(self.config) else "plaintext",
        )  # fmt: skip

    def reload_tokens(self) -> bool:
        """Re-read the tokens file now (SIGHUP); a bad file is logged and the old one kept.

        Returns:
            True when a new job table is in force.
        """
        return self.state.auth.try_reload()

    async def _watch_tokens(self) -> None:
        while True:
            await asyncio.sleep(TOKENS_POLL_S)
            self.state.auth.reload_if_changed()

    async def load(self) -> None:
        """Load (unless given) and warm the backend in its worker thread, then SERVING."""
        loop = asyncio.get_running_loop()
        if self._backend is None:
            self._backend = await loop.run_in_executor(self._executor, _load_backend, self.config)
        backend = self._backend
        await loop.run_in_executor(self._executor, backend.warmup)
        info = backend.info()
        c = self.config
        self._scheduler = Scheduler(
            backend,
            SchedulerConfig(
                c.max_batch_tokens, c.max_delay_ms / 1000, c.max_queue_tokens,
                c.contended_batch_tokens,
            ),  # fmt: skip
            clock=self._clock,
            hooks=self.state.metrics,
            executor=self._executor,
        )
        self._scheduler.start()
        self.state.set_loaded(info, self._scheduler)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (%s on %s)", self.state.model_id, info.dtype, info.device)

    async def _start_grpc(self) -> None:
        limits = message_limits(self.config)
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limits.send),
                ("grpc.max_receive_message_length", limits.receive),
                ("grpc.so_reuseport", 0),
            ]
        )
        c = self.config
        self._servicer = TeacherServicer(self.state, self._clock)
        add_to_server(self._servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self._grpc)
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            address = f"{c.host}:{c.port}"
            credentials = _server_credentials(c)
            self.grpc_port = (
                self._grpc.add_secure_port(address, credentials)
                if credentials is not None
                else self._grpc.add_insecure_port(address)
            )
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind the gRPC port {c.host}:{c.port}: {exc}") from None
        if self.grpc_port == 0:
            raise RuntimeError(f"cannot bind the gRPC port {c.host}:{c.port}")
        await self._grpc.start()

    async def stop(self, grace_s: float | None = None) -> bool:
        """Drain and stop: NOT_SERVING, refuse new calls, finish in-flight work, close.

        Args:
            grace_s: how long queued and in-flight work may take (default: drain_grace_s).
        Returns:
            True when all accepted work finished within the grace period.
        """
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        if self._watch_task is not None:
            self._watch_task.cancel()
        self.state.set_draining()
        await self._health.enter_graceful_shutdown()
        drained = True
        if self._scheduler is not None:
            drained = await self._scheduler.drain(grace)
        # Responses of drained work are still being written: let the handlers return.
        for _ in range(200):
            if self._servicer is None or self._servicer.active_calls == 0:
                break
            await asyncio.sleep(0.005)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self._scheduler is not None:
            await self._scheduler.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped (%s)", "drained" if drained else "grace period ran out")
        return drained


@dataclass
class ServerHandle:
    """A server running in a background thread with its own event loop."""

    server: TeacherServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    _stopped: bool = field(default=False, repr=False)

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def target(self) -> str:
        """gRPC target for a client, e.g. "127.0.0.1:50051"."""
        return f"{_connect_host(self.server.config.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if http_tls(self.server.config) else "http"
        return f"{scheme}://{_connect_host(self.server.config.host)}:{self.http_port}"

    def stop(self, grace_s: float | None = None) -> bool:
        """Drain and stop the server, then end its thread. Returns True when fully drained."""
        if self._stopped:
            return True
        self._stopped = True
        drained = asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        return drained

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace_s=5.0)


def _read_pem(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RuntimeError(f"{field} {path}: cannot read it ({exc.strerror})") from None


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files, or None for plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    cert = _read_pem(config.tls_cert_file, "tls_cert_file")
    key = _read_pem(config.tls_key_file, "tls_key_file")
    ca = config.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=_read_pem(ca, "tls_client_ca_file") if ca else None,
        require_client_auth=ca is not None,
    )


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def start_server(config: ServerConfig, backend: Backend | None = None) -> ServerHandle:
    """Start a teacher server in this process, in a background thread, and wait until SERVING.

    Args:
        config: the configuration (port 0 / http_port 0 pick free ports).
        backend: an already-built backend to serve; None loads `config.backend`.
    Returns:
        A handle with the bound ports, the client target, and `stop()`.
    Raises:
        Whatever start-up raised (bind failure, model load failure).
    """
    loop = asyncio.new_event_loop()
    server = TeacherServer(config, backend)
    thread = threading.Thread(target=loop.run_forever, name="teacher-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    except BaseException:
        asyncio.run_coroutine_threadsafe(server.stop(0.0), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        raise
    return ServerHandle(server, loop, thread)


async def serve_until_signal(config: ServerConfig, stop: asyncio.Event) -> bool:
    """Run a server until `stop` is set (the CLI sets it on SIGTERM/SIGINT), then drain.

    Args:
        config: the resolved configuration.
        stop: set to begin the graceful shutdown.
    Returns:
        True when all accepted work finished within the grace period.
    """
    server = TeacherServer(config)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        # Only possible on the main thread's loop (the CLI); kubectl/docker send SIGHUP rarely,
        # the file watcher covers Secret updates anyway.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload_tokens)
    await server.bind()
    host = _connect_host(config.host)
    print(
        f"teacher listening: grpc {host}:{server.grpc_port}, http {server.http_port} "
        f"(loading {config.model})",
        flush=True,
    )
    loading = asyncio.ensure_future(server.load())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        try:
            loading.result()
        except BaseException:
            stopping.cancel()
            await server.stop(0.0)
            raise
        print(f"teacher ready: serving {server.state.model_id}", flush=True)
        await stopping
    else:
        loading.cancel()
    return await server.stop()
