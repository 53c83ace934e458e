"""The wire contract's values as Python: one definition each, for the server and the client.

The server's backends, validation, servicer and HTTP routes produce these and the light client
hands the same types back to its caller; each carries the pair of helpers that converts it to
and from its proto message, so both sides read and write the contract the same way. Light on
purpose (numpy and the generated stubs only, no torch): the client imports it.
See docs/architecture.md#the-wire-contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tropd.wire import codec
from tropd.wire.v1 import teacher_pb2 as pb

# Trailing-metadata key of the server's retry hint, in milliseconds (RESOURCE_EXHAUSTED for a
# full queue, UNAVAILABLE while loading or draining). Keys starting with "grpc-" are reserved
# for the transport, so this is a plain application key.
RETRY_AFTER_KEY = "retry-after-ms"


@dataclass(frozen=True)
class Capabilities:
    """What a teacher's backend can compute; asking for anything else is UNIMPLEMENTED."""

    score: bool = True
    top_k: bool = True
    candidates: bool = True
    logsumexp: bool = True
    entropy: bool = True
    rank: bool = True
    generate: bool = True

    def to_proto(self) -> pb.Capabilities:
        return pb.Capabilities(**asdict(self))

    @classmethod
    def from_proto(cls, message: pb.Capabilities) -> Capabilities:
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Limits:
    """What a teacher accepts: its vocabulary, the configured caps, its backend's capabilities.

    The server validates every request against these (`tropd.teacher.validation`); `ModelInfo`
    carries them, flattened, to the client.
    """

    vocab_size: int  # rows of the model's output layer: every id must be below it
    max_sequence_length: int
    max_top_k: int
    max_candidates: int  # candidate ids per scored position
    max_request_tokens: int  # ids (or prompt + new tokens) in one request
    max_new_tokens: int  # generation cap per prompt
    capabilities: Capabilities

    def model_info_fields(self) -> dict[str, Any]:
        """These limits as keyword arguments of the `ModelInfo` message."""
        values = asdict(self)
        values["capabilities"] = self.capabilities.to_proto()
        return values

    @classmethod
    def from_model_info(cls, message: pb.ModelInfo) -> Limits:
        return cls(
            vocab_size=message.vocab_size,
            max_sequence_length=message.max_sequence_length,
            max_top_k=message.max_top_k,
            max_candidates=message.max_candidates,
            max_request_tokens=message.max_request_tokens,
            max_new_tokens=message.max_new_tokens,
            capabilities=Capabilities.from_proto(message.capabilities),
        )


@dataclass
class Timing:
    """Where the teacher's time went for one request, in seconds (zeros from older servers).

    Not frozen: the scheduler fills in the one its caller passes (`Scheduler.score`).
    """

    queue_seconds: float = 0.0  # longest wait of the request's sequences for their batch
    compute_seconds: float = 0.0  # forward time of the batches that carried them, each once

    def to_proto(self) -> pb.Timing:
        return pb.Timing(queue_seconds=self.queue_seconds, compute_seconds=self.compute_seconds)

    @classmethod
    def from_proto(cls, message: pb.Timing) -> Timing:
        return cls(message.queue_seconds, message.compute_seconds)


def _tensor(array: np.ndarray | None, dtype: Any) -> pb.Tensor | None:
    return None if array is None else codec.to_tensor(array, dtype)


def _array(result: pb.ScoreResult, name: str) -> np.ndarray | None:
    return codec.from_tensor(getattr(result, name), field=name) if result.HasField(name) else None


@dataclass(frozen=True)
class ScoredSequence:
    """Scores of one sequence; row i is about ids[start + i], m = end - start rows each.

    Unrequested fields are None. A backend returns float32 log-probs; the client gets them in
    the dtype it asked for (float32 or float16).
    """

    logprobs: np.ndarray  # [m]
    topk_ids: np.ndarray | None = None  # int32 [m, k], sorted by log-prob descending
    topk_logprobs: np.ndarray | None = None  # [m, k]
    candidate_logprobs: np.ndarray | None = None  # [m, C]
    logsumexp: np.ndarray | None = None  # float32 [m], of the raw logits
    entropy: np.ndarray | None = None  # float32 [m], nats
    rank: np.ndarray | None = None  # int32 [m], 0 = the scored id is the teacher's argmax

    def to_proto(self, logprob_dtype: np.dtype) -> pb.ScoreResult:
        """The `ScoreResult` message, log-prob arrays in `logprob_dtype`."""
        tensors = {
            "logprobs": _tensor(self.logprobs, logprob_dtype),
            "topk_ids": _tensor(self.topk_ids, np.int32),
            "topk_logprobs": _tensor(self.topk_logprobs, logprob_dtype),
            "candidate_logprobs": _tensor(self.candidate_logprobs, logprob_dtype),
            "logsumexp": _tensor(self.logsumexp, np.float32),
            "entropy": _tensor(self.entropy, np.float32),
            "rank": _tensor(self.rank, np.int32),
        }
        return pb.ScoreResult(**{k: v for k, v in tensors.items() if v is not None})

    @classmethod
    def from_proto(cls, result: pb.ScoreResult) -> ScoredSequence:
        """Decode a `ScoreResult`; arrays are read-only views of the message bytes."""
        optional = [f.name for f in fields(cls) if f.name != "logprobs"]
        return cls(
            logprobs=codec.from_tensor(result.logprobs, field="logprobs"),
            **{name: _array(result, name) for name in optional},
        )


@dataclass(frozen=True)
class Generation:
    """One sampled continuation."""

    ids: np.ndarray  # int32 [m], generated tokens only (a stop id included when emitted)
    logprobs: np.ndarray  # [m], untempered teacher log-prob of each generated token
    finish_reason: str  # "length" or "stop"

    def to_proto(self, logprob_dtype: np.dtype) -> pb.GenerateResult:
        return pb.GenerateResult(
            ids=codec.to_tensor(self.ids, np.int32),
            logprobs=codec.to_tensor(self.logprobs, logprob_dtype),
            finish_reason=self.finish_reason,
        )

    @classmethod
    def from_proto(cls, result: pb.GenerateResult) -> Generation:
        return cls(
            codec.from_tensor(result.ids, pb.DTYPE_INT32, 1, field="ids"),
            codec.from_tensor(result.logprobs, field="logprobs"),
            result.finish_reason,
        )
