"""Light building blocks of `tropd.teacher.client`: results, errors, codecs, the retry policy.

Pure functions and frozen dataclasses over `tropd.wire` (numpy and grpc only; no torch, no
transformers), kept apart from the channel so they are tested without a server. Scores,
generations, limits, capabilities and timing are the wire's own types (`tropd.wire.types`), the
ones the server fills in.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from tropd.teacher.fingerprint import TokenizerFingerprint
from tropd.wire import codec as wire
from tropd.wire.types import (
    RETRY_AFTER_KEY,
    Capabilities,
    Generation,
    Limits,
    ScoredSequence,
    Timing,
)
from tropd.wire.v1 import teacher_pb2 as pb

EXTRAS = ("logsumexp", "entropy", "rank")
_DTYPES: dict[str, pb.DType] = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# What waiting can cure (RESOURCE_EXHAUSTED only with the server's retry hint): the codes a
# client riding out an outage keeps retrying. Everything else is the teacher's final answer.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def is_transient(code: grpc.StatusCode, metadata: Any) -> bool:
    """True when waiting can cure a failure: UNAVAILABLE, DEADLINE_EXCEEDED, or
    RESOURCE_EXHAUSTED with the server's retry hint (a full queue, not a request too big)."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RETRY_AFTER_KEY in dict(metadata or ())
    return code in TRANSIENT


class TeacherClientError(Exception):
    """Base of the errors this client raises."""


class TeacherRpcError(TeacherClientError):
    """A call failed with a gRPC status (after any retries); `code` and `details` say why.

    `transient` is True when waiting could have cured it (the teacher was unreachable, busy or
    slow: retries ran out), False when it is the teacher's answer to this request (invalid,
    refused, unauthenticated, unimplemented, ...), which no retry changes.
    """

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        attempts: int,
        transient: bool = False,
        waited_s: float = 0.0,
    ) -> None:
        over = f" over {waited_s:.1f} s" if waited_s else ""
        super().__init__(
            f"{method} failed with {code.name} after {attempts} attempt(s){over}: {details}"
        )
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        self.transient = transient
        self.waited_s = waited_s


class TokenizerMismatch(TeacherClientError):
    """Student and teacher tokenizers differ: token ids would mean different things."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class TeacherInfo:
    """What the teacher is (`GetModelInfo`)."""

    model_id: str
    revision: str
    backend: str
    dtype: str
    device: str
    fingerprint: TokenizerFingerprint
    limits: Limits  # what requests may ask for: vocabulary, caps, capabilities
    server_version: str

    @property
    def vocab_size(self) -> int:
        """Rows of the model's output layer."""
        return self.limits.vocab_size

    @property
    def capabilities(self) -> Capabilities:
        return self.limits.capabilities


class ScoreResults(list[ScoredSequence]):
    """The answer of `score`: one ScoredSequence per sequence, plus the server's `timing`."""

    def __init__(self, items: Iterable[ScoredSequence], timing: Timing) -> None:
        super().__init__(items)
        self.timing = timing


class Generations(list[Generation]):
    """The answer of `generate`: one Generation per prompt, plus the server's `timing`."""

    def __init__(self, items: Iterable[Generation], timing: Timing) -> None:
        super().__init__(items)
        self.timing = timing


def _per_item(value: int | Sequence[int] | None, n: int, name: str, default: int) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, int | np.integer):
        return [int(value)] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} sequences")
    return values


def _ids_tensor(ids: Any) -> pb.Tensor:
    array = np.asarray(ids)
    if array.size == 0:
        array = array.astype(np.int32)  # [] parses as float64; an empty id list is still ids
    return wire.to_tensor(array, np.int32)


def _logprob_dtype(name: str) -> pb.DType:
    if name not in _DTYPES:
        raise ValueError(f"logprob_dtype {name!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def build_score_request(
    sequences: Sequence[Any],
    starts: int | Sequence[int],
    ends: int | Sequence[int] | None = None,
    top_k: int = 0,
    candidates: Sequence[Any | None] | None = None,
    extras: Iterable[str] = (),
    logprob_dtype: str = "float32",
) -> pb.ScoreRequest:
    """The ScoreRequest for `TeacherClient.score` (same arguments)."""
    n = len(sequences)
    starts_n = _per_item(starts, n, "starts", 1)
    ends_n = _per_item(ends, n, "ends", 0)
    extras = set(extras)
    if unknown := extras - set(EXTRAS):
        raise ValueError(f"extras: unknown {sorted(unknown)}; known: {list(EXTRAS)}")
    if candidates is not None and len(candidates) != n:
        raise ValueError(f"candidates: {len(candidates)} entries for {n} sequences")
    items = []
    for i, ids in enumerate(sequences):
        item = pb.ScoreItem(ids=_ids_tensor(ids), start=starts_n[i], end=ends_n[i])
        cands = None if candidates is None else candidates[i]
        if cands is not None:
            item.candidates.CopyFrom(wire.to_tensor(cands, np.int32))
        items.append(item)
    return pb.ScoreRequest(
        items=items,
        top_k=top_k,
        logprob_dtype=_logprob_dtype(logprob_dtype),
        return_logsumexp="logsumexp" in extras,
        return_entropy="entropy" in extras,
        return_rank="rank" in extras,
    )


def build_generate_request(
    prompts: Sequence[Any],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_ids: Iterable[int] = (),
    logprob_dtype: str = "float32",
) -> pb.GenerateRequest:
    """The GenerateRequest for `TeacherClient.generate` (same arguments)."""
    return pb.GenerateRequest(
        prompts=[_ids_tensor(p) for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_ids=[int(s) for s in stop_ids],
        logprob_dtype=_logprob_dtype(logprob_dtype),
    )


def parse_score(response: pb.ScoreResponse) -> ScoreResults:
    """Decode a ScoreResponse into one ScoredSequence per item, plus the server's timing."""
    scored = (ScoredSequence.from_proto(r) for r in response.results)
    return ScoreResults(scored, Timing.from_proto(response.timing))


def parse_generate(response: pb.GenerateResponse) -> Generations:
    """Decode a GenerateResponse into one Generation per prompt, plus the server's timing."""
    generated = (Generation.from_proto(r) for r in response.results)
    return Generations(generated, Timing.from_proto(response.timing))


def parse_info(message: pb.ModelInfo) -> TeacherInfo:
    """Decode a ModelInfo message."""
    t = message.tokenizer
    return TeacherInfo(
        model_id=message.model_id,
        revision=message.revision,
        backend=message.backend,
        dtype=message.dtype,
        device=message.device,
        fingerprint=TokenizerFingerprint(t.sha256, t.vocab_size, t.bos_id, t.eos_id, t.pad_id),
        limits=Limits.from_model_info(message),
        server_version=message.server_version,
    )


def compare_fingerprints(ours: TokenizerFingerprint, theirs: TokenizerFingerprint) -> None:
    """Raise TokenizerMismatch unless the two fingerprints are equal."""
    if ours != theirs:
        raise TokenizerMismatch(
            f"tokenizer mismatch: the student's tokenizer is {ours.short()} but the teacher's "
            f"is {theirs.short()}; student and teacher must share one tokenizer"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; the server's retry hint, when given, wins."""

    max_retries: int = 5
    base_s: float = 0.05
    max_s: float = 5.0

    def delay_s(self, error: grpc.RpcError, attempt: int, metadata: Any) -> float | None:
        """Seconds to wait before retry `attempt + 1`, or None when the error is final."""
        code = error.code()
        if attempt >= self.max_retries or code not in _RETRYABLE:
            return None
        return self.backoff_s(code, attempt, metadata)

    def backoff_s(self, code: grpc.StatusCode, attempt: int, metadata: Any) -> float | None:
        """The wait before retry `attempt + 1` of a transient error, with no retry limit.

        Returns:
            The server's hint times U(1, 1.25), else full-jitter exponential backoff; None for
            RESOURCE_EXHAUSTED without a hint (a request too big for the server, which no wait
            cures).
        """
        hint = dict(metadata or ()).get(RETRY_AFTER_KEY)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is None:
            return None
        if hint is not None:
            return float(hint) / 1000 * random.uniform(1.0, 1.25)
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** min(attempt, 30)))
