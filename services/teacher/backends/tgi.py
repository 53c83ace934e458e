"""`tgi` backend: score token ids through a remote text-generation-inference (TGI) server.

Boundary: ids in, numpy out, like every backend; everything TGI-specific stays here. TGI takes
text and adds special tokens itself, so each sequence is decoded with the shared tokenizer files
(`tokenizers` only: no torch, no transformers in this process), sent with
`decoder_input_details=true, max_new_tokens=1`, and the prefill ids TGI reports must equal the
caller's ids, or the call fails with FAILED_PRECONDITION naming the first differing position:
scores of a different token sequence are worse than no scores. TGI returns no top-k on prompt
positions and cannot gather candidates, so this backend scores sampled tokens only, and
generation is left to the student (capabilities say so; the trainer refuses losses that need
more). Requests run in parallel up to `max_concurrency`, capped by TGI's own
`max_concurrent_requests`. A TGI behind authentication gets `Authorization: Bearer <token>`
on every request (`token`, from TEACHER_TGI_TOKEN; never logged); `timeout_s` bounds each one.

    TEACHER_BACKEND=tgi TEACHER_TGI_URL=http://tgi:80 TEACHER_MODEL=/tokenizer tropd-teacher serve

Needs the `tgi` extra (`text-generation`, which pins huggingface-hub<1.0: see the README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import requests
import text_generation
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from text_generation import errors as tgi_errors

from tropd.teacher.backends.base import BackendInfo, GenerateTask, ScoreTask
from tropd.teacher.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    TeacherError,
    Unavailable,
    Unimplemented,
)
from tropd.teacher.text_tokenizer import TextTokenizer
from tropd.wire.types import Capabilities, Generation, ScoredSequence

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    score=True,
    top_k=False,
    candidates=False,
    logsumexp=False,
    entropy=False,
    rank=False,
    generate=False,
)
PREFILL_HINT = (
    "TGI returned no prefill log-probs: start TGI with --enable-prefill-logprobs "
    "(TGI >= 3.0 leaves them empty otherwise)"
)

T = TypeVar("T")


class TGIOptions(BaseModel):
    """Options of the `tgi` backend (what `load_backend("tgi", **options)` accepts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="TGI base URL, e.g. http://tgi:80")
    model_path: str = Field(description="folder with the shared tokenizer.json (+ config)")
    max_concurrency: int = Field(8, ge=1, description="parallel requests to TGI at most")
    timeout_s: float = Field(60.0, gt=0, description="per-request HTTP timeout, in seconds")
    token: SecretStr | None = Field(
        None, description="bearer token for a TGI behind authentication (never logged)"
    )

    def headers(self) -> dict[str, str]:
        """HTTP headers of every request to TGI: `Authorization: Bearer <token>` when set."""
        if self.token is None or not self.token.get_secret_value():
            return {}
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}


def map_tgi_error(exc: Exception, url: str) -> TeacherError:
    """A `text-generation` client (or transport) failure as the teacher error a caller sees.

    422 validation -> INVALID_ARGUMENT; 429 overloaded -> RESOURCE_EXHAUSTED; 424 generation
    and 500 incomplete generation -> INTERNAL; 503 and any other 5xx, a refused connection or a
    timeout -> UNAVAILABLE (TGI is down, loading or unreachable: retry later).
    """
    text = f"TGI at {url}: {exc}"
    if isinstance(exc, tgi_errors.ValidationError | tgi_errors.BadRequestError):
        return InvalidArgument(f"{text} (TGI refused the input: check its token limits)")
    if isinstance(exc, tgi_errors.OverloadedError | tgi_errors.RateLimitExceededError):
        return ResourceExhausted(f"{text} (TGI is overloaded)", retry_after_s=1.0)
    if isinstance(
        exc,
        tgi_errors.GenerationError
        | tgi_errors.IncompleteGenerationError
        | tgi_errors.ShardNotReadyError,
    ):
        return Internal(f"{text} (TGI failed while scoring)", reason="tgi_error")
    if isinstance(exc, tgi_errors.UnknownError | requests.RequestException | ValueError):
        return Unavailable(f"{text} (TGI unavailable)", retry_after_s=1.0)
    return Internal(f"{text}: {type(exc).__name__}", reason="tgi_error")


def first_difference(ours: Sequence[int], theirs: Sequence[int]) -> int | None:
    """First position where two id sequences differ (a length difference counts), or None."""
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return i
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


class TGIBackend:
    """A remote TGI server behind the `Backend` protocol (see teacher.backends.base)."""

    def __init__(self, options: TGIOptions) -> None:
        """Load the tokenizer files and read TGI's /info (its limits).

        Raises:
            teacher.text_tokenizer.TokenizerFilesError: no tokenizer.json in model_path.
            Unavailable: TGI does not answer /info.
        """
        self.options = options
        self.url = options.url.rstrip("/")
        self.tokenizer = TextTokenizer(options.model_path)
        self._tgi_info = self._get_info()
        tgi_cap = int(self._tgi_info.get("max_concurrent_requests") or options.max_concurrency)
        self.concurrency = max(1, min(options.max_concurrency, tgi_cap))
        # `requests` takes a float timeout, whatever text_generation's annotation says.
        self._client = text_generation.Client(
            self.url,
            headers=options.headers(),
            timeout=options.timeout_s,
        )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tgi")
        total = int(self._tgi_info.get("max_total_tokens") or 0)
        if total < 3:
            raise ValueError(f"TGI at {self.url} reports max_total_tokens = {total}")
        # One new token rides along with every scoring request (TGI needs >= 1).
        longest = total - 1
        if self._tgi_info.get("max_input_tokens"):
            longest = min(longest, int(self._tgi_info["max_input_tokens"]))
        self._info = BackendInfo(
            model_id=str(self._tgi_info.get("model_id") or options.model_path),
            revision=str(self._tgi_info.get("model_sha") or ""),
            backend="tgi",
            dtype=str(self._tgi_info.get("model_dtype") or "unknown"),
            device=f"tgi:{self.url}",
            vocab_size=self.tokenizer.vocab_size,
            max_sequence_length=longest,
            tokenizer=self.tokenizer.fingerprint,
            capabilities=CAPABILITIES,
        )
        log.info("tgi backend: %s, %d parallel requests", self._info, self.concurrency)

    def _get_info(self) -> dict[str, Any]:
        try:
            response = requests.get(
                f"{self.url}/info", headers=self.options.headers(), timeout=self.options.timeout_s
            )
            response.raise_for_status()
            return dict(response.json())
        except (requests.RequestException, ValueError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            hint = " (check the token: TEACHER_TGI_TOKEN)" if status in (401, 403) else ""
            raise Unavailable(f"TGI at {self.url} does not answer /info: {exc}{hint}") from None

    def info(self) -> BackendInfo:
        return self._info

    def warmup(self) -> None:
        """Score one short sequence: checks prefill log-probs are on and the ids round-trip."""
        ids = np.asarray(self.tokenizer.encode("the").ids, dtype=np.int32)
        if len(ids) < 2:
            ids = np.asarray(self.tokenizer.encode("the answer is").ids, dtype=np.int32)
        self._score_one(ScoreTask(ids, 1, len(ids)))

    def score(self, tasks: Sequence[ScoreTask]) -> list[ScoredSequence | TeacherError]:
        """Score each task with one TGI request, `concurrency` at a time.

        Returns:
            Per task, its log-probs, or the error that task alone fails with:
            FailedPrecondition when TGI tokenised it differently or prefill log-probs are off,
            other TGI refusals as mapped by `map_tgi_error`.
        """
        return self._parallel(self._score_or_error, tasks)

    def generate(self, tasks: Sequence[GenerateTask]) -> list[Generation]:
        raise Unimplemented("the tgi backend does not generate through tropd; use TGI directly")

    def _parallel(self, fn: Callable[[ScoreTask], T], tasks: Sequence[ScoreTask]) -> list[T]:
        if len(tasks) == 1:
            return [fn(tasks[0])]
        return list(self._pool.map(fn, tasks))

    def _score_or_error(self, task: ScoreTask) -> ScoredSequence | TeacherError:
        try:
            return self._score_one(task)
        except TeacherError as exc:
            return exc

    def _score_one(self, task: ScoreTask) -> ScoredSequence:
        if task.top_k or task.candidates is not None:
            raise Unimplemented("the tgi backend has no top-k or candidate log-probs")
        ids = [int(i) for i in task.ids]
        prefix = list(self.tokenizer.added_prefix)
        # TGI adds the tokenizer's special prefix (e.g. <bos>) itself: send the text after it.
        body = ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids
        text = self.tokenizer.decode(body)
        try:
            response = self._client.generate(text, max_new_tokens=1, decoder_input_details=True)
        except Exception as exc:
            raise map_tgi_error(exc, self.url) from None
        prefill = response.details.prefill
        if not prefill:
            raise FailedPrecondition(PREFILL_HINT, reason="tgi_no_prefill")
        theirs = [t.id for t in prefill]
        where = first_difference(ids, theirs)
        if where is not None:
            raise FailedPrecondition(self._mismatch(ids, theirs, where), reason="tgi_tokens")
        logprobs = [prefill[p].logprob for p in range(task.start, task.end)]
        if any(lp is None for lp in logprobs):
            raise FailedPrecondition(PREFILL_HINT, reason="tgi_no_prefill")
        return ScoredSequence(logprobs=np.asarray(logprobs, dtype=np.float32))

    def _mismatch(self, ours: list[int], theirs: list[int], where: int) -> str:
        def at(seq: list[int]) -> str:
            if where >= len(seq):
                return "end of sequence"
            return f"id {seq[where]} ({self.tokenizer.token_text(seq[where])!r})"

        return (
            f"TGI tokenised the sequence differently at position {where}: the student sent "
            f"{at(ours)}, TGI has {at(theirs)} ({len(ours)} vs {len(theirs)} ids). The "
            f"tokenizer files in {self.options.model_path} must be those of TGI's model, and "
            "sequences must decode to text that re-tokenises to the same ids"
        )
