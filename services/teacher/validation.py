"""Proto requests -> validated backend tasks, checked once, before anything is enqueued.

Every check rejects (never truncates) with a typed error from `tropd.teacher.errors` whose message
names the item index, the field, the offending value and the limit. What passes satisfies the
contract in `tropd.teacher.backends.base`: ids inside the vocabulary, 1 <= start < end <= len(ids),
k and candidate counts within the caps, lengths within the model's maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tropd.teacher.backends.base import GenerateTask, ScoreTask
from tropd.teacher.errors import InvalidArgument, ResourceExhausted, Unimplemented
from tropd.wire import codec as wire
from tropd.wire.types import Limits
from tropd.wire.v1 import teacher_pb2 as pb

# Log-prob dtypes a client may ask for; UNSPECIFIED means float32 (see the proto).
_LOGPROB_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_UNSPECIFIED: np.dtype(np.float32),
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_FLOAT16: np.dtype(np.float16),
}


@dataclass(frozen=True)
class ScoreWork:
    tasks: tuple[ScoreTask, ...]
    logprob_dtype: np.dtype  # float32 or float16, for every log-prob array of the response
    num_tokens: int  # sum of sequence lengths: the forward cost of the request


@dataclass(frozen=True)
class GenerateWork:
    tasks: tuple[GenerateTask, ...]
    logprob_dtype: np.dtype
    num_tokens: int  # sum of prompt length + max_new_tokens over prompts


def _logprob_dtype(value: int) -> np.dtype:
    if value not in _LOGPROB_DTYPES:
        raise InvalidArgument(
            f"logprob_dtype = {wire.dtype_name(value)} is not supported; "
            "use DTYPE_FLOAT32 or DTYPE_FLOAT16",
            reason="bad_dtype",
        )
    return _LOGPROB_DTYPES[value]


def _decode_ids(tensor: pb.Tensor, field: str, ndim: int) -> np.ndarray:
    try:
        return wire.from_tensor(tensor, pb.DTYPE_INT32, ndim, field=field)
    except ValueError as exc:
        raise InvalidArgument(str(exc), reason="bad_tensor") from None


def _check_vocab(ids: np.ndarray, field: str, vocab_size: int) -> None:
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if len(bad) == 0:
        return
    where = ", ".join(str(int(i)) for i in bad[0])
    more = f" ({len(bad) - 1} more ids out of range)" if len(bad) > 1 else ""
    raise InvalidArgument(
        f"{field}[{where}] = {int(ids[tuple(bad[0])])} is outside the vocabulary "
        f"[0, {vocab_size}){more}",
        reason="id_out_of_vocab",
    )


def _check_request_tokens(num_tokens: int, limits: Limits, what: str) -> None:
    if num_tokens > limits.max_request_tokens:
        raise ResourceExhausted(
            f"request holds {num_tokens} tokens ({what}), above the server limit "
            f"max_request_tokens = {limits.max_request_tokens}; split it into smaller requests",
            reason="request_too_large",
        )


def _check_score_options(request: pb.ScoreRequest, limits: Limits) -> None:
    caps = limits.capabilities
    if request.top_k < 0 or request.top_k > limits.max_top_k:
        raise InvalidArgument(
            f"top_k = {request.top_k} is outside [0, max_top_k = {limits.max_top_k}]",
            reason="top_k_too_large",
        )
    if request.top_k > limits.vocab_size:
        raise InvalidArgument(
            f"top_k = {request.top_k} exceeds the vocabulary size {limits.vocab_size}",
            reason="top_k_too_large",
        )
    wanted = {
        "top_k": (request.top_k > 0, caps.top_k),
        "return_logsumexp": (request.return_logsumexp, caps.logsumexp),
        "return_entropy": (request.return_entropy, caps.entropy),
        "return_rank": (request.return_rank, caps.rank),
        "candidates": (any(it.HasField("candidates") for it in request.items), caps.candidates),
    }
    for name, (asked, offered) in wanted.items():
        if asked and not offered:
            raise Unimplemented(f"{name} is not supported by this teacher's backend")


def _span(item: pb.ScoreItem, n: int, field: str) -> tuple[int, int]:
    start = item.start
    end = item.end if item.end != 0 else n
    if start < 1:
        raise InvalidArgument(
            f"{field}.start = {start}: must be >= 1 (the first token has no context and "
            "cannot be scored)",
            reason="bad_span",
        )
    if end < 0 or end > n:
        raise InvalidArgument(
            f"{field}.end = {item.end} is outside the sequence (length {n}); "
            "use 0 for the end of the sequence",
            reason="bad_span",
        )
    if start >= end:
        raise InvalidArgument(
            f"{field}: span [start = {start}, end = {end}) is empty; need 1 <= start < end <= "
            f"{n} (the sequence length)",
            reason="bad_span",
        )
    return start, end


def _score_item(
    item: pb.ScoreItem, index: int, request: pb.ScoreRequest, limits: Limits
) -> ScoreTask:
    field = f"items[{index}]"
    ids = _decode_ids(item.ids, f"{field}.ids", ndim=1)
    n = len(ids)
    if n == 0:
        raise InvalidArgument(f"{field}.ids: empty sequence", reason="empty_sequence")
    if n > limits.max_sequence_length:
        raise InvalidArgument(
            f"{field}.ids: length {n} exceeds max_sequence_length = {limits.max_sequence_length}",
            reason="sequence_too_long",
        )
    _check_vocab(ids, f"{field}.ids", limits.vocab_size)
    start, end = _span(item, n, field)
    candidates = None
    if item.HasField("candidates"):
        candidates = _decode_ids(item.candidates, f"{field}.candidates", ndim=2)
        rows, cols = candidates.shape
        if rows != end - start:
            raise InvalidArgument(
                f"{field}.candidates: shape [{rows}, {cols}] does not match the span "
                f"[{start}, {end}): expected [{end - start}, C]",
                reason="bad_candidates",
            )
        if cols > limits.max_candidates:
            raise InvalidArgument(
                f"{field}.candidates: {cols} candidates per position exceed max_candidates = "
                f"{limits.max_candidates}",
                reason="bad_candidates",
            )
        _check_vocab(candidates, f"{field}.candidates", limits.vocab_size)
    return ScoreTask(
        ids=ids,
        start=start,
        end=end,
        top_k=request.top_k,
        candidates=candidates,
        want_logsumexp=request.return_logsumexp,
        want_entropy=request.return_entropy,
        want_rank=request.return_rank,
    )


def validate_score(request: pb.ScoreRequest, limits: Limits) -> ScoreWork:
    """Check a ScoreRequest against the limits and turn it into backend tasks.

    Args:
        request: the request as received.
        limits: the server's limits and the backend's capabilities.
    Returns:
        One ScoreTask per item, in order, with the requested log-prob dtype.
    Raises:
        InvalidArgument: empty batch or sequence, id outside the vocabulary, bad span, top_k
            above the cap, candidate shape or ids wrong, sequence too long, bad dtype.
        ResourceExhausted: the request holds more than max_request_tokens tokens.
        Unimplemented: an output the backend cannot produce.
    """
    if not request.items:
        raise InvalidArgument("items: empty batch; send at least one sequence", reason="empty")
    logprob_dtype = _logprob_dtype(request.logprob_dtype)
    _check_score_options(request, limits)
    num_tokens = sum(len(item.ids.data) // 4 for item in request.items)
    _check_request_tokens(num_tokens, limits, f"{len(request.items)} sequences")
    tasks = tuple(_score_item(item, i, request, limits) for i, item in enumerate(request.items))
    return ScoreWork(tasks, logprob_dtype, sum(len(t.ids) for t in tasks))


def _check_sampling(request: pb.GenerateRequest, limits: Limits) -> tuple[float, float]:
    if request.max_new_tokens <= 0 or request.max_new_tokens > limits.max_new_tokens:
        raise InvalidArgument(
            f"max_new_tokens = {request.max_new_tokens} is outside [1, max_new_tokens = "
            f"{limits.max_new_tokens}]",
            reason="bad_max_new_tokens",
        )
    temperature = request.temperature if request.HasField("temperature") else 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidArgument(
            f"temperature = {temperature} must be a finite number >= 0 (0 means greedy)",
            reason="bad_temperature",
        )
    top_p = request.top_p if request.HasField("top_p") else 1.0
    if not (0 < top_p <= 1):
        raise InvalidArgument(f"top_p = {top_p} must be in (0, 1]", reason="bad_top_p")
    stop_ids = np.asarray(request.stop_ids, dtype=np.int64)
    _check_vocab(stop_ids, "stop_ids", limits.vocab_size)
    return float(temperature), float(top_p)


def validate_generate(request: pb.GenerateRequest, limits: Limits) -> GenerateWork:
    """Check a GenerateRequest against the limits and turn it into backend tasks.

    Args:
        request: the request as received.
        limits: the server's limits and the backend's capabilities.
    Returns:
        One GenerateTask per prompt, in order, with the requested log-prob dtype.
    Raises:
        InvalidArgument: no prompts, an empty prompt, an id outside the vocabulary,
            max_new_tokens <= 0 or above the cap, temperature < 0, top_p outside (0, 1],
            prompt + max_new_tokens above the maximum sequence length, bad dtype.
        ResourceExhausted: prompts + new tokens above max_request_tokens.
        Unimplemented: the backend cannot generate.
    """
    if not limits.capabilities.generate:
        raise Unimplemented("Generate is not supported by this teacher's backend")
    if not request.prompts:
        raise InvalidArgument("prompts: empty batch; send at least one prompt", reason="empty")
    logprob_dtype = _logprob_dtype(request.logprob_dtype)
    temperature, top_p = _check_sampling(request, limits)
    new = request.max_new_tokens
    num_tokens = sum(len(p.data) // 4 + new for p in request.prompts)
    _check_request_tokens(num_tokens, limits, f"{len(request.prompts)} prompts + new tokens")
    tasks = []
    for i, tensor in enumerate(request.prompts):
        prompt = _decode_ids(tensor, f"prompts[{i}]", ndim=1)
        if len(prompt) == 0:
            raise InvalidArgument(f"prompts[{i}]: empty prompt", reason="empty_sequence")
        if len(prompt) + new > limits.max_sequence_length:
            raise InvalidArgument(
                f"prompts[{i}]: length {len(prompt)} + max_new_tokens {new} = "
                f"{len(prompt) + new} exceeds max_sequence_length = "
                f"{limits.max_sequence_length}",
                reason="sequence_too_long",
            )
        _check_vocab(prompt, f"prompts[{i}]", limits.vocab_size)
        # Prompt i samples with seed + i: a request repeating one prompt gets distinct drafts,
        # and the same request with the same seed gets the same tokens.
        seed = (request.seed + i) % 2**63 if request.HasField("seed") else None
        tasks.append(GenerateTask(prompt, new, temperature, top_p, seed, tuple(request.stop_ids)))
    return GenerateWork(tuple(tasks), logprob_dtype, num_tokens)
