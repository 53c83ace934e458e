"""The teacher server's one exception hierarchy, and the one table of its statuses.

Every failure the server can explain is a `TeacherError` subclass carrying its gRPC status
code, its HTTP status (for the side port's routes), a message a person can act on (naming the
index, field, value and limit) and a short `reason` label for the rejection metrics. The
subclasses below are the table: nothing else picks a status for them. `to_status` is the single
place where an exception becomes a gRPC status; anything that is not a `TeacherError` becomes
INTERNAL, never UNKNOWN. See docs/architecture.md#errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from tropd.wire.types import RETRY_AFTER_KEY


class TeacherError(Exception):
    """Base of every error the server reports to a client with a specific status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # 424 is TGI's status for a failed generation: the TGI-compatible routes report every error
    # without an HTTP status of its own (deadline, cancelled, internal) that way.
    http_status: int = 424
    default_reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgument(TeacherError):
    """The request is malformed or violates a documented limit; retrying will not help."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    default_reason = "invalid_argument"


class ResourceExhausted(TeacherError):
    """The server cannot take this work now (queue full, request too big); may carry a hint."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    default_reason = "resource_exhausted"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Unavailable(TeacherError):
    """The server is not ready (loading, warming up) or is draining; retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    default_reason = "unavailable"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Unauthenticated(TeacherError):
    """No job token, or one the tokens file does not know; the message never echoes the token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    default_reason = "unauthenticated"


class PermissionDenied(TeacherError):
    """A known job asked for something its tokens-file entry does not allow (e.g. Generate)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    default_reason = "permission_denied"


class FailedPrecondition(TeacherError):
    """The request is well formed but the server's state forbids it (e.g. tokenizer mismatch)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 422
    default_reason = "failed_precondition"


class Unimplemented(TeacherError):
    """The backend cannot do what was asked (e.g. top-k on a backend without it)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 422
    default_reason = "unimplemented"


class DeadlineExceeded(TeacherError):
    """The caller's deadline passed before the work reached the model."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "deadline_exceeded"


class Cancelled(TeacherError):
    """The caller went away before the work reached the model."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "cancelled"


class Internal(TeacherError):
    """A server-side failure (e.g. a backend forward raised); the message says which batch."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "internal"


@dataclass(frozen=True)
class Status:
    """What a client receives for a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def to_status(exc: BaseException) -> Status:
    """Map any exception to the status a client sees.

    Args:
        exc: a `TeacherError` (mapped to its own code) or anything else (mapped to INTERNAL
            with the exception type and text, so it is never reported as UNKNOWN).
    Returns:
        The status, with a retry hint in trailing metadata where the error carries one.
    """
    if isinstance(exc, TeacherError):
        retry_after_s = getattr(exc, "retry_after_s", None)
        trailing: tuple[tuple[str, str], ...] = ()
        if retry_after_s is not None:
            trailing = ((RETRY_AFTER_KEY, str(max(1, round(retry_after_s * 1000)))),)
        return Status(exc.code, exc.message, exc.reason, trailing)
    return Status(
        grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "internal"
    )
