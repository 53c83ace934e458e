"""The gRPC servicer: translation only, plus the one place errors become gRPC statuses.

proto request -> `teacher.validation` -> `teacher.scheduler` -> backend outputs -> proto via
`teacher.wire`. No model code and no queue logic live here. `_rpc` wraps every method: it
refuses work while loading or draining, maps any exception through `teacher.errors.to_status`
(so nothing reaches a client as UNKNOWN) and counts the call by method and status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from tropd.teacher.v1 import teacher_pb2 as pb
from tropd.teacher.v1 import teacher_pb2_grpc as pb_grpc

from teacher import wire
from teacher.backends.base import GenerateOutput, ScoreOutput
from teacher.errors import TeacherError, to_status
from teacher.scheduler import Clock, Scheduler
from teacher.state import ServerState
from teacher.validation import Limits, validate_generate, validate_score

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc(method: str) -> Callable[[Handler], Handler]:
    """Wrap a servicer method with the error boundary and the request metrics."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(self: TeacherServicer, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            self.active_calls += 1
            self._state.metrics.in_flight.inc()
            try:
                response = await fn(self, request, context)
            except asyncio.CancelledError:
                self.record(method, grpc.StatusCode.CANCELLED, started)
                raise
            except Exception as exc:
                status = to_status(exc)
                if not isinstance(exc, TeacherError):
                    log.exception("%s failed with an unexpected error", method)
                self.record(method, status.code, started)
                await context.abort(status.code, status.message, status.trailing_metadata)
            else:
                self.record(method, grpc.StatusCode.OK, started)
                return response
            finally:
                self.active_calls -= 1
                self._state.metrics.in_flight.dec()

        return handler

    return wrap


def _tensor(array: np.ndarray | None, dtype: Any) -> pb.Tensor | None:
    return None if array is None else wire.to_tensor(array, dtype)


def score_result(out: ScoreOutput, logprob_dtype: np.dtype) -> pb.ScoreResult:
    """One backend ScoreOutput as a proto ScoreResult, log-probs in the requested dtype."""
    fields = {
        "logprobs": _tensor(out.logprobs, logprob_dtype),
        "topk_ids": _tensor(out.topk_ids, np.int32),
        "topk_logprobs": _tensor(out.topk_logprobs, logprob_dtype),
        "candidate_logprobs": _tensor(out.candidate_logprobs, logprob_dtype),
        "logsumexp": _tensor(out.logsumexp, np.float32),
        "entropy": _tensor(out.entropy, np.float32),
        "rank": _tensor(out.rank, np.int32),
    }
    return pb.ScoreResult(**{k: v for k, v in fields.items() if v is not None})


def generate_result(out: GenerateOutput, logprob_dtype: np.dtype) -> pb.GenerateResult:
    """One backend GenerateOutput as a proto GenerateResult."""
    return pb.GenerateResult(
        ids=wire.to_tensor(out.ids, np.int32),
        logprobs=wire.to_tensor(out.logprobs, logprob_dtype),
        finish_reason=out.finish_reason,
    )


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

    def record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        metrics = self._state.metrics
        metrics.requests.labels(method, code.name).inc()
        metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self._clock.now() + remaining

    def _validated(
        self, validate: Callable[[Any, Limits], Any], request: Any
    ) -> tuple[Any, Scheduler]:
        try:
            limits, scheduler = self._state.check_serving()
            return validate(request, limits), scheduler
        except TeacherError as exc:
            self._state.metrics.on_rejection(exc.reason)
            raise

    @_rpc("GetModelInfo")
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return self._state.model_info()

    @_rpc("Score")
    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        work, scheduler = self._validated(validate_score, request)
        outputs = await scheduler.score(work.tasks, self._deadline(context))
        self._state.metrics.scored_tokens.inc(sum(t.num_scored for t in work.tasks))
        info = self._state.info
        return pb.ScoreResponse(
            results=[score_result(out, work.logprob_dtype) for out in outputs],
            tokenizer_sha256=info.tokenizer.sha256 if info else "",
            model_id=self._state.model_id,
        )

    @_rpc("Generate")
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        work, scheduler = self._validated(validate_generate, request)
        outputs = await scheduler.generate(work.tasks, self._deadline(context))
        self._state.metrics.generated_tokens.inc(sum(len(out.ids) for out in outputs))
        info = self._state.info
        return pb.GenerateResponse(
            results=[generate_result(out, work.logprob_dtype) for out in outputs],
            tokenizer_sha256=info.tokenizer.sha256 if info else "",
            model_id=self._state.model_id,
        )
