"""Light building blocks of `tropd.teacher.client`: result types, errors, request/response codecs.

Pure functions and frozen dataclasses over `tropd.wire` (numpy and grpc only; no torch, no
transformers). The blocking and asyncio clients in `tropd.teacher.client` share
them, so both speak exactly the same wire format and retry policy.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from tropd.teacher.fingerprint import TokenizerFingerprint
from tropd.wire import codec as wire
from tropd.wire.v1 import teacher_pb2 as pb

RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata set by the server (teacher.errors)
EXTRAS = ("logsumexp", "entropy", "rank")
_DTYPES: dict[str, pb.DType] = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class TeacherClientError(Exception):
    """Base of the errors this client raises."""


class TeacherRpcError(TeacherClientError):
    """A call failed with a gRPC status (after any retries); `code` and `details` say why."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, attempts: int) -> None:
        super().__init__(f"{method} failed with {code.name} after {attempts} attempt(s): {details}")
        self.code = code
        self.details = details


class TokenizerMismatch(TeacherClientError):
    """Student and teacher tokenizers differ: token ids would mean different things."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class Capabilities:
    score: bool
    top_k: bool
    candidates: bool
    logsumexp: bool
    entropy: bool
    rank: bool
    generate: bool


@dataclass(frozen=True)
class Limits:
    max_sequence_length: int
    max_top_k: int
    max_candidates: int
    max_request_tokens: int
    max_new_tokens: int


@dataclass(frozen=True)
class TeacherInfo:
    """What the teacher is (`GetModelInfo`)."""

    model_id: str
    revision: str
    backend: str
    dtype: str
    device: str
    vocab_size: int  # rows of the model's output layer
    fingerprint: TokenizerFingerprint
    limits: Limits
    capabilities: Capabilities
    server_version: str


@dataclass(frozen=True)
class ScoredSequence:
    """Scores of one sequence; row i is about ids[start + i]. Unrequested fields are None."""

    logprobs: np.ndarray  # [m] float32 or float16
    topk_ids: np.ndarray | None = None  # int32 [m, k], best first
    topk_logprobs: np.ndarray | None = None  # [m, k]
    candidate_logprobs: np.ndarray | None = None  # [m, C]
    logsumexp: np.ndarray | None = None  # float32 [m]
    entropy: np.ndarray | None = None  # float32 [m], nats
    rank: np.ndarray | None = None  # int32 [m], 0 = the teacher's argmax


@dataclass(frozen=True)
class ServerTiming:
    """Where the teacher's time went for one request, in seconds (zeros from older servers)."""

    queue_seconds: float = 0.0  # longest wait of the request's sequences for their batch
    compute_seconds: float = 0.0  # forward time of the batches that carried them


class ScoreResults(list[ScoredSequence]):
    """The answer of `score`: one ScoredSequence per sequence, plus the server's `timing`."""

    def __init__(self, items: Iterable[ScoredSequence], timing: ServerTiming) -> None:
        super().__init__(items)
        self.timing = timing


@dataclass(frozen=True)
class Generation:
    ids: np.ndarray  # int32 [m], generated tokens only
    logprobs: np.ndarray  # [m], untempered teacher log-prob of each generated token
    finish_reason: str  # "length" or "stop"


class Generations(list[Generation]):
    """The answer of `generate`: one Generation per prompt, plus the server's `timing`."""

    def __init__(self, items: Iterable[Generation], timing: ServerTiming) -> None:
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


def _array(result: Any, name: str) -> np.ndarray | None:
    return wire.from_tensor(getattr(result, name), field=name) if result.HasField(name) else None


def _timing(message: pb.Timing) -> ServerTiming:
    return ServerTiming(message.queue_seconds, message.compute_seconds)


def parse_score(response: pb.ScoreResponse) -> ScoreResults:
    """Decode a ScoreResponse into one ScoredSequence per item, plus the server's timing."""
    fields = ("topk_ids", "topk_logprobs", "candidate_logprobs", "logsumexp", "entropy", "rank")
    scored = (
        ScoredSequence(
            logprobs=wire.from_tensor(r.logprobs, field="logprobs"),
            **{name: _array(r, name) for name in fields},
        )
        for r in response.results
    )
    return ScoreResults(scored, _timing(response.timing))


def parse_generate(response: pb.GenerateResponse) -> Generations:
    """Decode a GenerateResponse into one Generation per prompt, plus the server's timing."""
    generated = (
        Generation(
            wire.from_tensor(r.ids, pb.DTYPE_INT32, 1, field="ids"),
            wire.from_tensor(r.logprobs, field="logprobs"),
            r.finish_reason,
        )
        for r in response.results
    )
    return Generations(generated, _timing(response.timing))


def parse_info(message: pb.ModelInfo) -> TeacherInfo:
    """Decode a ModelInfo message."""
    t, c = message.tokenizer, message.capabilities
    return TeacherInfo(
        model_id=message.model_id,
        revision=message.revision,
        backend=message.backend,
        dtype=message.dtype,
        device=message.device,
        vocab_size=message.vocab_size,
        fingerprint=TokenizerFingerprint(t.sha256, t.vocab_size, t.bos_id, t.eos_id, t.pad_id),
        limits=Limits(
            message.max_sequence_length,
            message.max_top_k,
            message.max_candidates,
            message.max_request_tokens,
            message.max_new_tokens,
        ),
        capabilities=Capabilities(
            c.score, c.top_k, c.candidates, c.logsumexp, c.entropy, c.rank, c.generate
        ),
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
        hint = dict(metadata or ()).get(RETRY_AFTER_KEY)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is None:
            return None  # a request too big for the server, not a full queue
        if hint is not None:
            return float(hint) / 1000 * random.uniform(1.0, 1.25)
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class ClientBase:
    def __init__(
        self,
        target: str,
        token: str | None,
        timeout: float,
        max_retries: int,
        max_message_bytes: int,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._options = _channel_options(max_message_bytes)
        self._expected_sha: str | None = None

    def _check_response(self, sha: str) -> None:
        if self._expected_sha is not None and sha and sha != self._expected_sha:
            raise TokenizerMismatch(
                f"the teacher now answers with tokenizer {sha[:12]}, not the checked "
                f"{self._expected_sha[:12]}: it was replaced by a different model"
            )

    @classmethod
    def _env_kwargs(cls, environ: Mapping[str, str] | None) -> dict[str, Any]:
        env = os.environ if environ is None else environ
        target = env.get("TEACHER_TARGET")
        if not target:
            raise TeacherClientError("TEACHER_TARGET is not set (e.g. TEACHER_TARGET=host:50051)")
        return {"target": target, "token": env.get("TEACHER_TOKEN") or None}


def final_error(method: str, error: grpc.RpcError, attempts: int) -> TeacherRpcError:
    return TeacherRpcError(method, error.code(), error.details() or "", attempts)
