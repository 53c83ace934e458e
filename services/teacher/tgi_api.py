"""TGI-compatible HTTP routes on the teacher's side port: POST / and /generate, GET /info,
POST /tokenize, with text-generation-inference's request and response schema.

Translation only, like the gRPC servicer: text -> ids (the model folder's tokenizer.json, which
must match the backend's tokenizer fingerprint) -> the same validation and scheduler as gRPC ->
TGI's JSON. So a tool that speaks TGI (e.g. the `text-generation` client) shares this teacher's
batching, queue limits and metrics with gRPC students. Differences from TGI, by design:
* `decoder_input_details` always works (no launcher flag needed); `top_n_tokens` is served
  from a scoring pass and needs a backend with top-k.
* Logprobs of generated tokens are untempered (the model's own distribution).
* Unsupported parameters (best_of > 1, repetition/frequency penalty, top_k, typical_p,
  truncate, stop strings, grammar, watermark, adapters, streaming) are refused with 422,
  never silently ignored.
Callers authenticate like gRPC students (`authorization: Bearer <job token>`, `teacher.auth`):
their work runs under their job's fair share and quotas; generating needs the job's `generate`
right, prompt log-probs and top-n its `score` right. Errors use TGI's body
`{"error", "error_type"}` with the HTTP status `teacher.errors` gives each error: 422
validation, 429 overloaded, 503 unavailable, 424 generation, 401/403 for a missing or refused
token.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import tropd
from tropd.teacher.auth import Job, Method
from tropd.teacher.errors import FailedPrecondition, InvalidArgument, TeacherError, Unavailable
from tropd.teacher.http_limits import JSON_BODY, BodyRefused, parse_json
from tropd.teacher.state import ServerState
from tropd.teacher.text_tokenizer import TextTokenizer, TokenizerFilesError
from tropd.teacher.validation import validate_generate, validate_score
from tropd.wire import codec as wire
from tropd.wire.v1 import teacher_pb2 as pb

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default


_INT32_MAX = 2**31 - 1  # integers that travel in int32 proto fields
_INT64_MAX = 2**63 - 1
_MISSING = object()
MAX_JSON_DEPTH = 32  # when a route is reached without the BodyLimits middleware (tests)


class GenerateParameters(BaseModel):
    """TGI's `GenerateParameters`; unknown keys are ignored, as TGI's router does. Every integer
    is range-checked here (422), so none overflows a proto field later."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    adapter_id: str | None = None
    best_of: int | None = Field(None, ge=0, le=_INT32_MAX)
    decoder_input_details: bool = False
    details: bool = True
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = Field(None, ge=0, le=_INT32_MAX)
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0, le=_INT64_MAX)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=-1, le=_INT32_MAX)
    top_n_tokens: int | None = Field(None, ge=0, le=_INT32_MAX)
    top_p: float | None = Field(None, gt=0, le=1)
    truncate: int | None = Field(None, ge=0, le=_INT32_MAX)
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


def _unsupported(p: GenerateParameters, stream: bool) -> list[str]:
    checks = {
        "stream": stream,
        "best_of": p.best_of not in (None, 1),
        "repetition_penalty": p.repetition_penalty not in (None, 1.0),
        "frequency_penalty": p.frequency_penalty not in (None, 0.0),
        "top_k": p.top_k is not None,
        "typical_p": p.typical_p not in (None, 1.0),
        "truncate": p.truncate is not None,
        "stop": bool(p.stop),
        "grammar": p.grammar is not None,
        "watermark": p.watermark,
        "adapter_id": p.adapter_id is not None,
    }
    return [name for name, bad in checks.items() if bad]


# TGI's `error_type` for each HTTP status a teacher error carries (`TeacherError.http_status`).
_ERROR_TYPES = {
    401: "unauthenticated",
    403: "permission_denied",
    422: "validation",
    424: "generation",
    429: "overloaded",
    503: "unavailable",
}


def error_response(exc: TeacherError) -> JSONResponse:
    """A teacher error as TGI's error body, with the error's own HTTP status."""
    status = exc.http_status
    kind = _ERROR_TYPES.get(status, "generation")
    headers = {}
    retry_after_s = getattr(exc, "retry_after_s", None)
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return JSONResponse({"error": exc.message, "error_type": kind}, status, headers=headers)


@functools.cache
def _load_tokenizer(folder: str) -> TextTokenizer:
    return TextTokenizer(folder)


class _Translator:
    """Turns TGI requests into scheduler work and the results into TGI's JSON."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def tokenizer(self) -> TextTokenizer:
        info = self._state.info
        if info is None:
            raise Unavailable("the teacher is still loading its model", retry_after_s=1.0)
        folder = self._state.config.model
        try:
            tok = _load_tokenizer(str(Path(folder)))
        except TokenizerFilesError as exc:
            raise FailedPrecondition(
                f"the TGI-compatible routes need tokenizer.json in the model folder: {exc}"
            ) from None
        if tok.fingerprint.sha256 != info.tokenizer.sha256:
            raise FailedPrecondition(
                f"tokenizer.json in {folder} ({tok.fingerprint.short()}) differs from the "
                f"backend's tokenizer ({info.tokenizer.short()})"
            )
        return tok

    def admit(self, request: Request, rights: Sequence[Method] = ()) -> Job:
        """The caller's job (from its bearer token), checked for each of `rights`."""
        auth = self._state.auth
        job = auth.authenticate(request.headers.get("authorization"))
        for right in rights:
            auth.authorize(job, right)
        return job

    async def generate(self, request: Request) -> dict[str, Any]:
        job = self.admit(request)
        req = await _parse(request)
        p = req.parameters
        bad = _unsupported(p, req.stream)
        if bad:
            raise InvalidArgument(f"not supported by the tropd teacher: {', '.join(bad)}")
        limits, scheduler = self._state.check_serving()
        tok = self.tokenizer()
        ids = np.asarray(tok.encode(req.inputs).ids, dtype=np.int32)
        new = p.max_new_tokens
        if new is None:
            room = limits.max_sequence_length - len(ids)
            new = max(0, min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens, room))
        top_n = p.top_n_tokens or 0
        rights: list[Method] = ["generate"] if new > 0 else []
        if p.decoder_input_details or top_n:
            rights.append("score")
        for right in rights:
            self._state.auth.authorize(job, right)
        sampling = p.do_sample or p.temperature not in (None, 1.0) or p.top_p not in (None, 1.0)
        seed = (p.seed if p.seed is not None else secrets.randbelow(2**63)) if sampling else None
        generated = np.zeros(0, np.int32)
        gen_logprobs = np.zeros(0, np.float32)
        finish = "length"
        if new > 0:
            gen_request = pb.GenerateRequest(
                prompts=[wire.to_tensor(ids, np.int32)],
                max_new_tokens=new,
                temperature=(p.temperature or 1.0) if sampling else 0.0,
                top_p=p.top_p or 1.0,
                stop_ids=[] if tok.eos_id is None else [tok.eos_id],
            )
            if seed is not None:
                gen_request.seed = seed
            work = validate_generate(gen_request, limits)
            [out] = await scheduler.generate(work.tasks, job=job)
            generated, gen_logprobs = out.ids, out.logprobs
            finish = "eos_token" if out.finish_reason == "stop" else "length"
        full = np.concatenate([ids, generated]).astype(np.int32)
        prefill_rows, top_rows = await self._score(
            full, len(ids), p.decoder_input_details, top_n, job
        )
        text = tok.decode(generated.tolist(), skip_special_tokens=True)
        if p.return_full_text:
            text = req.inputs + text
        if not p.details:
            return {"generated_text": text}
        details: dict[str, Any] = {
            "finish_reason": finish,
            "generated_tokens": len(generated),
            "seed": seed,
            "prefill": [],
            "tokens": [
                self._token(tok, int(i), float(lp))
                for i, lp in zip(generated, gen_logprobs, strict=True)
            ],
        }
        if p.decoder_input_details:
            rows = np.zeros(0, np.float32) if prefill_rows is None else prefill_rows
            details["prefill"] = [
                {"id": int(ids[0]), "text": tok.token_text(int(ids[0])), "logprob": None}
            ] + [
                {"id": int(i), "text": tok.token_text(int(i)), "logprob": float(lp)}
                for i, lp in zip(ids[1:], rows, strict=True)
            ]
        if top_n and top_rows is not None:
            top_ids, top_lps = top_rows
            details["top_tokens"] = [
                [self._token(tok, int(i), float(lp)) for i, lp in zip(ri, rl, strict=True)]
                for ri, rl in zip(top_ids, top_lps, strict=True)
            ]
        return {"generated_text": text, "details": details}

    async def _score(
        self, full: np.ndarray, n_prompt: int, prefill: bool, top_n: int, job: Job
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """Prompt log-probs (rows for ids[1:n_prompt]) and top-n of generated positions."""
        start = 1 if prefill else n_prompt
        if len(full) < 2 or start >= len(full) or not (prefill or top_n):
            return None, None
        limits, scheduler = self._state.check_serving()
        item = pb.ScoreItem(ids=wire.to_tensor(full, np.int32), start=start, end=len(full))
        work = validate_score(pb.ScoreRequest(items=[item], top_k=top_n), limits)
        [out] = await scheduler.score(work.tasks, job=job)
        offset = n_prompt - start  # row of the first generated position
        prefill_rows = out.logprobs[:offset] if prefill else None
        top_rows = None
        if top_n and out.topk_ids is not None and out.topk_logprobs is not None:
            top_rows = (out.topk_ids[offset:], out.topk_logprobs[offset:])
        return prefill_rows, top_rows

    @staticmethod
    def _token(tok: TextTokenizer, token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "id": token_id,
            "text": tok.token_text(token_id),
            "logprob": logprob,
            "special": token_id in tok.special_ids,
        }

    async def tokenize(self, request: Request) -> list[dict[str, Any]]:
        self.admit(request)
        req = await _parse(request)
        limits, _ = self._state.check_serving()
        enc = self.tokenizer().encode(req.inputs)
        if len(enc.ids) > limits.max_sequence_length:
            # No request to this model can hold them: refuse rather than build a huge answer.
            raise InvalidArgument(
                f"Input validation error: inputs tokenize to {len(enc.ids)} tokens, above "
                f"max_sequence_length = {limits.max_sequence_length}"
            )
        return [
            {"id": i, "text": req.inputs[a:b], "start": a, "stop": b}
            for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)
        ]

    def info(self, request: Request) -> dict[str, Any]:
        self.admit(request)
        limits, _ = self._state.check_serving()
        info = self._state.info
        assert info is not None  # check_serving passed
        return {
            "model_id": self._state.model_id,
            "model_sha": info.revision or None,
            "model_dtype": info.dtype,
            "model_device_type": info.device.split(":")[0],
            "model_pipeline_tag": "text-generation",
            # How many longest-possible requests the queue holds at once.
            "max_concurrent_requests": max(
                1, self._state.config.max_queue_tokens // limits.max_sequence_length
            ),
            "max_best_of": 1,
            "max_stop_sequences": 0,
            "max_input_tokens": limits.max_sequence_length - 1,
            "max_total_tokens": limits.max_sequence_length,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "tropd-teacher",
            "version": tropd.__version__,
            "sha": None,
            "docker_label": None,
        }


async def _parse(request: Request) -> GenerateRequest:
    # `BodyLimits` (teacher.http_limits) has read, size-checked and parsed the body already.
    body = getattr(request.state, JSON_BODY, _MISSING)
    if body is _MISSING:
        try:
            body = parse_json(await request.body(), MAX_JSON_DEPTH)
        except BodyRefused as exc:
            raise InvalidArgument(exc.message) from None
    try:
        return GenerateRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidArgument(f"Input validation error: {where}: {first['msg']}") from None


def tgi_router(state: ServerState) -> APIRouter:
    """The TGI-compatible routes over one server's state.

    Args:
        state: the server state (readiness, limits, scheduler, model facts, job tokens).
    Returns:
        A router with POST / (TGI's compat route: a one-element list), POST /generate,
        POST /tokenize and GET /info.
    """
    router = APIRouter()
    translator = _Translator(state)

    async def run_generate(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            return await translator.generate(request)
        except TeacherError as exc:
            state.metrics.on_rejection(exc.reason)
            return error_response(exc)

    @router.post("/generate")
    async def generate(request: Request) -> Any:
        return await run_generate(request)

    @router.post("/")
    async def compat_generate(request: Request) -> Any:
        result = await run_generate(request)
        return result if isinstance(result, JSONResponse) else [result]

    @router.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        try:
            return await translator.tokenize(request)
        except TeacherError as exc:
            return error_response(exc)

    @router.get("/info")
    def info(request: Request) -> Any:
        try:
            return translator.info(request)
        except TeacherError as exc:
            return error_response(exc)

    return router
