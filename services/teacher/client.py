"""Python client of the teacher service: token ids in, numpy arrays out.

Light on purpose: grpc, numpy, `tropd.wire` and `tropd.teacher.fingerprint` only (no torch, no
transformers), so a student job or a notebook can import it anywhere.

    client = TeacherClient("localhost:50051")           # or TeacherClient.from_env()
    client.check_tokenizer(my_fingerprint)               # TokenizerMismatch if they differ
    rows = client.score([ids], starts=[prompt_len], top_k=20, extras=("entropy",))
    rows[0].logprobs[i]                                  # log-prob of ids[prompt_len + i]
    rows.timing.queue_seconds                            # how long the request queued

One blocking client, thread-safe; a caller on an event loop runs it in a thread. Calls retry
UNAVAILABLE, and RESOURCE_EXHAUSTED that carries the server's retry hint (a full queue; not a
request that is simply too big), with exponential backoff and jitter, within one overall
deadline per call. `ride_outages(seconds, observer)` switches to what a training job wants:
each attempt gets the call timeout, and UNAVAILABLE, hinted RESOURCE_EXHAUSTED and
DEADLINE_EXCEEDED are retried with backoff for up to `seconds` from the first failure (a
teacher restart, a model reload), the observer hearing of every wait and of the recovery.
Results are the wire's own value types (`tropd.wire.types`: ScoredSequence,
Generation, Timing, Limits, Capabilities), re-exported here; their arrays are read-only views
of the response bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tropd.teacher.client_codec import (
    EXTRAS,
    Generations,
    RetryPolicy,
    ScoreResults,
    TeacherClientError,
    TeacherInfo,
    TeacherRpcError,
    TokenizerMismatch,
    build_generate_request,
    build_score_request,
    compare_fingerprints,
    is_transient,
    parse_generate,
    parse_info,
    parse_score,
)
from tropd.teacher.fingerprint import TokenizerFingerprint
from tropd.wire.types import Capabilities, Generation, Limits, ScoredSequence, Timing
from tropd.wire.v1 import teacher_pb2 as pb
from tropd.wire.v1 import teacher_pb2_grpc as pb_grpc

__all__ = [
    "EXTRAS",
    "Capabilities",
    "Generation",
    "Generations",
    "Limits",
    "Outage",
    "RetryPolicy",
    "ScoreResults",
    "ScoredSequence",
    "TeacherClient",
    "TeacherClientError",
    "TeacherInfo",
    "TeacherRpcError",
    "Timing",
    "TokenizerFingerprint",
    "TokenizerMismatch",
    "tls_credentials",
]


OUTAGE_MAX_BACKOFF_S = 10.0  # longest pause between attempts while riding out an outage


@dataclass(frozen=True)
class Outage:
    """What an outage observer hears: a call is waiting for the teacher, or has got through.

    `waited_s` counts from the call's first failure; `next_try_s` is the pause before the next
    attempt (0 once recovered).
    """

    method: str
    code: grpc.StatusCode
    details: str
    attempts: int
    waited_s: float
    limit_s: float
    next_try_s: float = 0.0
    recovered: bool = False


OutageObserver = Callable[[Outage], None]


class TeacherClient:
    """Blocking client. Thread-safe: one instance may serve many threads."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_message_bytes: int = 512 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Args:
        target: "host:port" of the teacher's gRPC port.
        token: sent as `authorization: Bearer <token>` when given.
        timeout: default overall deadline of one call, retries included, in seconds.
        max_retries: retries of UNAVAILABLE / hinted RESOURCE_EXHAUSTED per call.
        max_message_bytes: largest message sent or received.
        credentials: TLS credentials; None for a plaintext channel.
        """
        self.target = target
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.TeacherStub(self._channel)
        self._expected_sha: str | None = None  # set by check_tokenizer
        self._outage_s: float | None = None  # set by ride_outages
        self._observer: OutageObserver | None = None

    def ride_outages(self, seconds: float | None, observer: OutageObserver | None = None) -> None:
        """Retry transient failures of every later call for up to `seconds` (None: stop).

        Args:
            seconds: how long one call keeps retrying UNAVAILABLE, hinted RESOURCE_EXHAUSTED and
                DEADLINE_EXCEEDED, counted from its first failure; each attempt gets the call
                timeout. Other codes still fail at once.
            observer: called (in the calling thread) before each wait and once on recovery;
                it must not raise.
        """
        self._outage_s, self._observer = seconds, observer

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> TeacherClient:
        """A client for TEACHER_TARGET, with TEACHER_TOKEN when set; kwargs go to __init__."""
        env = os.environ if environ is None else environ
        target = env.get("TEACHER_TARGET")
        if not target:
            raise TeacherClientError("TEACHER_TARGET is not set (e.g. TEACHER_TARGET=host:50051)")
        return cls(target, env.get("TEACHER_TOKEN") or None, **kwargs)

    def _call(
        self, name: str, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> Any:
        if self._outage_s is not None:
            return self._call_riding(name, method, request, timeout, self._outage_s)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as error:
                delay = self.retry.delay_s(error, attempt, error.trailing_metadata())
                attempt += 1
                if delay is None or time.monotonic() + delay >= deadline:
                    transient = is_transient(error.code(), error.trailing_metadata())
                    raise TeacherRpcError(
                        name, error.code(), error.details() or "", attempt, transient
                    ) from None
                time.sleep(delay)

    def _call_riding(
        self,
        name: str,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        limit_s: float,
    ) -> Any:
        """`_call` while riding outages: per-attempt timeouts, retries for up to `limit_s`."""
        per_attempt = self.timeout if timeout is None else timeout
        first_failure: float | None = None
        attempt = 0
        last: tuple[grpc.StatusCode, str] = (grpc.StatusCode.OK, "")
        while True:
            try:
                response = method(request, timeout=per_attempt, metadata=self._metadata)
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                attempt += 1
                delay = None
                if is_transient(code, error.trailing_metadata()):
                    delay = self.retry.backoff_s(code, attempt - 1, error.trailing_metadata())
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                waited = now - first_failure
                if delay is None:  # the teacher's answer to this request: final
                    raise TeacherRpcError(name, code, details, attempt) from None
                delay = min(delay, OUTAGE_MAX_BACKOFF_S)
                if waited + delay > limit_s:
                    raise TeacherRpcError(
                        name, code, details, attempt, transient=True, waited_s=waited
                    ) from None
                last = (code, details)
                self._notify(Outage(name, code, details, attempt, waited, limit_s, delay))
                time.sleep(delay)
                continue
            if first_failure is not None:
                waited = time.monotonic() - first_failure
                self._notify(Outage(name, *last, attempt, waited, limit_s, recovered=True))
            return response

    def _notify(self, event: Outage) -> None:
        if self._observer is not None:
            self._observer(event)

    def _check_response(self, sha: str) -> None:
        if self._expected_sha is not None and sha and sha != self._expected_sha:
            raise TokenizerMismatch(
                f"the teacher now answers with tokenizer {sha[:12]}, not the checked "
                f"{self._expected_sha[:12]}: it was replaced by a different model"
            )

    def info(self, timeout: float | None = None) -> TeacherInfo:
        """What the teacher serves: model, tokenizer fingerprint, limits, capabilities."""
        request = pb.GetModelInfoRequest()
        message = self._call("GetModelInfo", self._stub.GetModelInfo, request, timeout)
        return parse_info(message)

    def check_tokenizer(self, fingerprint: TokenizerFingerprint) -> TeacherInfo:
        """Verify the teacher uses `fingerprint`'s tokenizer; later responses are checked too.

        Args:
            fingerprint: the student's tokenizer fingerprint (`tropd.teacher.fingerprint`).
        Returns:
            The teacher's info.
        Raises:
            TokenizerMismatch: the fingerprints differ (the message names both).
        """
        info = self.info()
        compare_fingerprints(fingerprint, info.fingerprint)
        self._expected_sha = info.fingerprint.sha256
        return info

    def score(
        self,
        sequences: Sequence[Any],
        starts: int | Sequence[int],
        ends: int | Sequence[int] | None = None,
        top_k: int = 0,
        candidates: Sequence[Any | None] | None = None,
        extras: Iterable[str] = (),
        logprob_dtype: str = "float32",
        timeout: float | None = None,
    ) -> ScoreResults:
        """Teacher log-probs of given token ids.

        Args:
            sequences: token-id sequences (anything convertible to an int32 array).
            starts: first scored position per sequence (>= 1), or one int for all.
            ends: one past the last scored position (per sequence, one int, or None = to the
                end of each sequence).
            top_k: also return the teacher's k best ids and log-probs at each position.
            candidates: per sequence, None or int32 [end - start, C] ids whose log-probs to
                gather at each position.
            extras: any of "logsumexp", "entropy", "rank".
            logprob_dtype: "float32" or "float16" for the log-prob arrays.
            timeout: overall deadline in seconds (default: the client's).
        Returns:
            One ScoredSequence per sequence (row i scores ids[start + i]), in a list whose
            `.timing` says how long the request queued and computed at the teacher.
        Raises:
            TeacherRpcError: the server refused (e.g. INVALID_ARGUMENT) or stayed unavailable.
            ValueError: arguments that cannot form a request.
        """
        request = build_score_request(
            sequences, starts, ends, top_k, candidates, extras, logprob_dtype
        )
        response = self._call("Score", self._stub.Score, request, timeout)
        self._check_response(response.tokenizer_sha256)
        return parse_score(response)

    def generate(
        self,
        prompts: Sequence[Any],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_ids: Iterable[int] = (),
        logprob_dtype: str = "float32",
        timeout: float | None = None,
    ) -> Generations:
        """Sample continuations from the teacher.

        Args:
            prompts: token-id prompts.
            max_new_tokens: tokens to generate per prompt (>= 1, up to the server cap).
            temperature: 0 for greedy.
            top_p: nucleus mass in (0, 1].
            seed: prompt i samples with seed + i, so one request is reproducible.
            stop_ids: a sequence ends after emitting one of these.
            logprob_dtype: "float32" or "float16".
            timeout: overall deadline in seconds (default: the client's).
        Returns:
            One Generation per prompt, in a list with the server's `.timing`.
        """
        request = build_generate_request(
            prompts, max_new_tokens, temperature, top_p, seed, stop_ids, logprob_dtype
        )
        response = self._call("Generate", self._stub.Generate, request, timeout)
        self._check_response(response.tokenizer_sha256)
        return parse_generate(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tls_credentials(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials | None:
    """Channel credentials from PEM files: TLS with `ca_file`, mutual TLS with cert and key too.

    Returns:
        None (plaintext) when no file is given.
    Raises:
        ValueError: a cert without its key (or the reverse), client files without a CA, or an
            unreadable file; the message names it.
    """
    if ca_file is None:
        if cert_file or key_file:
            raise ValueError("a client certificate/key needs a CA file (TLS) too")
        return None
    if (cert_file is None) != (key_file is None):
        raise ValueError("the client certificate and key files go together")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
