"""The gRPC servicer: translation only, plus the one place errors become gRPC statuses.

proto request -> `teacher.validation` -> `teacher.scheduler` -> backend outputs -> proto via
`tropd.wire.types`. No model code and no queue logic live here. `_rpc` wraps every method: it
authenticates the call's `authorization: Bearer <token>` metadata into a `teacher.auth.Job` and
checks the job may call the method, refuses work while loading or draining, maps any exception
through `teacher.errors.to_status` (so nothing reaches a client as UNKNOWN) and counts the call
by method and status, and by job once the job is known. Health and reflection stay open.

`add_to_server` registers the methods with deserializers that never raise: bytes that are not
a valid request message reach `_rpc` as `Unparseable` and become INVALID_ARGUMENT, counted like
any other call (gRPC's own handling would answer UNKNOWN and log a traceback per call).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tropd.teacher.auth import Job, Method
from tropd.teacher.errors import InvalidArgument, TeacherError, to_status
from tropd.teacher.scheduler import Clock, Scheduler
from tropd.teacher.state import ServerState
from tropd.teacher.validation import validate_generate, validate_score
from tropd.wire.types import Limits, Timing
from tropd.wire.v1 import teacher_pb2 as pb
from tropd.wire.v1 import teacher_pb2_grpc as pb_grpc  # the servicer base class

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext, Job], Awaitable[Resp]]
Wrapped = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


@dataclass(frozen=True)
class Unparseable:
    """What the deserializer hands the servicer for bytes that are not a valid message."""

    message_type: str
    error: str
    size: int


def _lenient(message: type[Any]) -> Callable[[bytes], Any]:
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # DecodeError, and anything else protobuf may raise
            return Unparseable(name, f"{type(exc).__name__}: {exc}", len(data))

    return parse


def add_to_server(servicer: TeacherServicer, server: grpc.aio.Server) -> None:
    """Register the Teacher service on `server` with non-raising request deserializers."""
    methods: dict[str, tuple[Any, type[Any], type[Any]]] = {
        "GetModelInfo": (servicer.GetModelInfo, pb.GetModelInfoRequest, pb.ModelInfo),
        "Score": (servicer.Score, pb.ScoreRequest, pb.ScoreResponse),
        "Generate": (servicer.Generate, pb.GenerateRequest, pb.GenerateResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=_lenient(request),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for name, (fn, request, response) in methods.items()
    }
    service = pb.DESCRIPTOR.services_by_name["Teacher"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _rpc(method: str, right: Method | None) -> Callable[[Handler], Wrapped]:
    """Wrap a servicer method with authentication, the error boundary and the request metrics.

    Args:
        method: the RPC name (metrics label).
        right: what the job must be allowed to do (`Job.allow`), or None (any known job).
    """

    def wrap(fn: Handler) -> Wrapped:
        @functools.wraps(fn)
        async def handler(self: TeacherServicer, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            self.active_calls += 1
            self._state.metrics.in_flight.inc()
            job: Job | None = None
            try:
                job = self._authenticate(context, method, right)
                if isinstance(request, Unparseable):
                    self._state.metrics.on_rejection("unparseable", job.name)
                    raise InvalidArgument(
                        f"the {request.size}-byte request is not a valid {request.message_type} "
                        f"message ({request.error})",
                        reason="unparseable",
                    )
                response = await fn(self, request, context, job)
            except asyncio.CancelledError:
                self.record(method, grpc.StatusCode.CANCELLED, started, job)
                raise
            except Exception as exc:
                status = to_status(exc)
                if not isinstance(exc, TeacherError):
                    log.exception("%s failed with an unexpected error", method)
                self.record(method, status.code, started, job)
                await context.abort(status.code, status.message, status.trailing_metadata)
            else:
                self.record(method, grpc.StatusCode.OK, started, job)
                return response
            finally:
                self.active_calls -= 1
                self._state.metrics.in_flight.dec()

        return handler

    return wrap


class TeacherServicer(pb_grpc.TeacherServicer):
    """Implements tropd.teacher.v1.Teacher over a scheduler."""

    def __init__(self, state: ServerState, clock: Clock) -> None:
        """Args:
        state: readiness, model facts, metrics and (once loaded) the scheduler.
        clock: the scheduler's clock, to turn gRPC deadlines into queue deadlines.
        """
        self._state = state
        self._clock = clock
        self.active_calls = 0

    def record(self, method: str, code: grpc.StatusCode, started: float, job: Job | None) -> None:
        metrics = self._state.metrics
        metrics.requests.labels(method, code.name).inc()
        metrics.request_seconds.labels(method).observe(time.perf_counter() - started)
        if job is not None:
            metrics.job_requests.labels(metrics.job(job.name), method, code.name).inc()

    def _authenticate(
        self, context: grpc.aio.ServicerContext, method: str, right: Method | None
    ) -> Job:
        auth = self._state.auth
        try:
            job = auth.authenticate(_authorization(context))
            if right is not None:
                auth.authorize(job, right)
        except TeacherError as exc:
            # The peer and the reason only: never the token, not even a malformed one.
            self._state.refusal_log.warning(
                exc.reason, "refused %s from %s: %s", method, context.peer(), exc.message
            )
            self._state.metrics.on_rejection(exc.reason)
            raise
        return job

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self._clock.now() + remaining

    def _validated(
        self, validate: Callable[[Any, Limits], Any], request: Any, job: Job
    ) -> tuple[Any, Scheduler]:
        try:
            limits, scheduler = self._state.check_serving()
            return validate(request, limits), scheduler
        except TeacherError as exc:
            self._state.metrics.on_rejection(exc.reason, job.name)
            raise

    @_rpc("GetModelInfo", None)
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext, job: Job
    ) -> pb.ModelInfo:
        return self._state.model_info()

    @_rpc("Score", "score")
    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext, job: Job
    ) -> pb.ScoreResponse:
        work, scheduler = self._validated(validate_score, request, job)
        timing = Timing()
        outputs = await scheduler.score(work.tasks, self._deadline(context), job, timing)
        scored = sum(t.num_scored for t in work.tasks)
        metrics = self._state.metrics
        metrics.scored_tokens.inc(scored)
        metrics.job_scored_tokens.labels(metrics.job(job.name)).inc(scored)
        info = self._state.info
        return pb.ScoreResponse(
            results=[out.to_proto(work.logprob_dtype) for out in outputs],
            tokenizer_sha256=info.tokenizer.sha256 if info else "",
            model_id=self._state.model_id,
            timing=timing.to_proto(),
        )

    @_rpc("Generate", "generate")
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, job: Job
    ) -> pb.GenerateResponse:
        work, scheduler = self._validated(validate_generate, request, job)
        timing = Timing()
        outputs = await scheduler.generate(work.tasks, self._deadline(context), job, timing)
        generated = sum(len(out.ids) for out in outputs)
        metrics = self._state.metrics
        metrics.generated_tokens.inc(generated)
        metrics.job_generated_tokens.labels(metrics.job(job.name)).inc(generated)
        info = self._state.info
        return pb.GenerateResponse(
            results=[out.to_proto(work.logprob_dtype) for out in outputs],
            tokenizer_sha256=info.tokenizer.sha256 if info else "",
            model_id=self._state.model_id,
            timing=timing.to_proto(),
        )
