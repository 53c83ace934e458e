"""What the gRPC servicer and the HTTP app share: readiness, the model's facts, the limits.

One `ServerState` per server, mutated only on the event loop (start-up, drain). It answers
"may a request run now?", holds the job table (`auth`, see `teacher.auth`: both the gRPC
servicer and the HTTP routes authenticate through it) and describes the model as the
`ModelInfo` message both the gRPC `GetModelInfo` and the HTTP `/v1/info` return.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import tropd
from tropd.teacher.auth import Authenticator
from tropd.teacher.backends.base import BackendInfo
from tropd.teacher.config import ServerConfig
from tropd.teacher.errors import Unavailable
from tropd.teacher.metrics import RefusalLog, TeacherMetrics
from tropd.wire.types import Limits
from tropd.wire.v1 import teacher_pb2 as pb

if TYPE_CHECKING:
    from tropd.teacher.scheduler import Scheduler

# Refused calls log under the servicer's name, where operators have always looked for them.
_refusals = logging.getLogger("tropd.teacher.servicer")


def limits_for(info: BackendInfo, config: ServerConfig) -> Limits:
    """Combine the model's facts with the configured caps.

    Args:
        info: what the backend reports.
        config: the server configuration (caps, optional max_sequence_length override).
    Returns:
        The limits requests are validated against.
    """
    max_len = info.max_sequence_length
    if config.max_sequence_length is not None:
        max_len = min(max_len, config.max_sequence_length)
    return Limits(
        vocab_size=info.vocab_size,
        max_sequence_length=max_len,
        max_top_k=min(config.max_top_k, info.vocab_size),
        max_candidates=config.max_candidates,
        max_request_tokens=config.max_request_tokens,
        max_new_tokens=config.max_new_tokens,
        capabilities=info.capabilities,
    )


@dataclass
class ServerState:
    """Lifecycle flags and model facts of one server."""

    config: ServerConfig
    metrics: TeacherMetrics
    info: BackendInfo | None = None
    limits: Limits | None = None
    scheduler: Scheduler | None = None
    draining: bool = False
    auth: Authenticator = field(default_factory=lambda: Authenticator(None))
    refusal_log: RefusalLog = field(init=False)

    def __post_init__(self) -> None:
        interval = self.config.refusal_log_interval_s
        self.refusal_log = RefusalLog(_refusals, interval, self.metrics)

    @property
    def ready(self) -> bool:
        return self.limits is not None and not self.draining

    @property
    def model_id(self) -> str:
        if self.config.model_id:
            return self.config.model_id
        return self.info.model_id if self.info is not None else self.config.model

    def set_loaded(self, info: BackendInfo, scheduler: Scheduler) -> None:
        self.info = info
        self.scheduler = scheduler
        self.limits = limits_for(info, self.config)
        self.metrics.ready.set(1)

    def set_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)

    def check_serving(self) -> tuple[Limits, Scheduler]:
        """The limits and the scheduler, or Unavailable while loading or draining."""
        if self.draining:
            raise Unavailable(
                "the teacher is draining (shutting down); retry on another replica",
                reason="draining",
                retry_after_s=1.0,
            )
        if self.limits is None or self.scheduler is None:
            raise Unavailable(
                "the teacher is still loading its model", reason="loading", retry_after_s=1.0
            )
        return self.limits, self.scheduler

    def info_dict(self) -> dict[str, Any]:
        """The model info as plain JSON-able data (for /v1/info); Unavailable before loading."""
        message = self.model_info()
        info = self.info
        assert info is not None and self.limits is not None  # model_info() checked both
        limits = asdict(self.limits)
        capabilities = limits.pop("capabilities")
        return {
            "model_id": message.model_id,
            "revision": info.revision,
            "backend": info.backend,
            "dtype": info.dtype,
            "device": info.device,
            "vocab_size": info.vocab_size,
            "tokenizer": asdict(info.tokenizer),
            "limits": limits,
            "capabilities": capabilities,
            "server_version": message.server_version,
        }

    def jobs_dict(self) -> dict[str, Any]:
        """Configured jobs and their live queues (for /v1/jobs); holds no tokens."""
        loads = self.scheduler.job_loads() if self.scheduler is not None else {}
        jobs = []
        for job in self.auth.jobs:
            load = loads.get(job.name)
            jobs.append(
                {
                    "name": job.name,
                    "weight": job.weight,
                    "allow": sorted(job.allow),
                    "quotas": asdict(job.quotas),
                    "queued_tokens": load.queued_tokens if load else 0,
                    "queued_sequences": load.queued_sequences if load else 0,
                    "in_flight_requests": load.in_flight_requests if load else 0,
                    "served_tokens": load.served_tokens if load else 0,
                }
            )
        return {"auth_enforced": self.auth.enforced, "jobs": jobs}

    def model_info(self) -> pb.ModelInfo:
        """The `ModelInfo` message (raises Unavailable before the model is loaded)."""
        if self.info is None or self.limits is None:
            raise Unavailable("the teacher is still loading its model", reason="loading")
        info, limits = self.info, self.limits
        return pb.ModelInfo(
            model_id=self.model_id,
            revision=info.revision,
            backend=info.backend,
            dtype=info.dtype,
            device=info.device,
            tokenizer=pb.TokenizerFingerprint(**asdict(info.tokenizer)),
            server_version=tropd.__version__,
            **limits.model_info_fields(),  # vocab_size, the caps and the capabilities
        )
