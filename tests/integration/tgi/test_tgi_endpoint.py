"""The TGI-compatible routes of a tropd teacher, checked with the REAL `text-generation` client.

The client's pydantic models (in .venv-tgi) parse our responses: an independent check of the
schema. Values are checked against a plain float32 forward of the same tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.teacher.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.text_tokenizer import TextTokenizer
from tropd.teacher.tgi_api import error_response

PROMPT = "the answer is the sum of the first digit"
# TGI's OpenAPI `Info` schema: the keys it marks required.
INFO_REQUIRED = {
    "model_id", "max_concurrent_requests", "max_best_of", "max_stop_sequences",
    "max_input_tokens", "max_total_tokens", "validation_workers", "max_client_batch_size",
    "router", "version",
}  # fmt: skip


@pytest.fixture(scope="module")
def hf_teacher(tiny_llama_dir: Path, make_hf_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_hf_config(tiny_llama_dir))
    yield handle
    handle.stop(grace_s=5.0)


@pytest.fixture(scope="module")
def reference_T_V(tiny_llama_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()

    @torch.inference_mode()
    def logprobs_T_V(ids: list[int]) -> np.ndarray:
        logits = model(torch.as_tensor([ids])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).numpy()

    return logprobs_T_V


def test_text_tokenizer_matches_transformers(tiny_llama_dir: Path) -> None:
    from tropd.teacher.fingerprint import fingerprint_of

    ours = TextTokenizer(tiny_llama_dir)
    hf = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert ours.fingerprint == fingerprint_of(hf)
    assert ours.encode(PROMPT).ids == hf(PROMPT)["input_ids"]


def test_real_client_parses_generate_with_details(
    hf_teacher: ServerHandle, tiny_llama_dir: Path, tgi_probe, reference_T_V
) -> None:
    kwargs = {"max_new_tokens": 5, "decoder_input_details": True, "top_n_tokens": 3}
    via_client, via_generate = tgi_probe(
        hf_teacher.http_url,
        [
            {"route": "client", "inputs": PROMPT, "kwargs": kwargs},
            {"route": "generate", "inputs": PROMPT, "kwargs": kwargs},
        ],
    )
    assert "error" not in via_client, via_client
    assert via_client == via_generate  # greedy: both routes give the same answer
    details = via_client["details"]
    prompt_ids = TextTokenizer(tiny_llama_dir).encode(PROMPT).ids
    prefill = details["prefill"]
    assert [t["id"] for t in prefill] == prompt_ids
    assert prefill[0]["logprob"] is None  # the first token cannot be scored
    generated = [t["id"] for t in details["tokens"]]
    assert details["generated_tokens"] == len(generated) == 5
    assert details["finish_reason"] == "length"
    full = prompt_ids + generated
    ref_T_V = reference_T_V(full)
    expect = ref_T_V[np.arange(len(full) - 1), full[1:]]
    got = [t["logprob"] for t in prefill[1:]] + [t["logprob"] for t in details["tokens"]]
    np.testing.assert_allclose(got, expect, atol=1e-4)
    # Greedy decoding: each generated token is the reference argmax, and tops the top-n list.
    for step, token in enumerate(details["tokens"]):
        row = ref_T_V[len(prompt_ids) - 1 + step]
        assert token["id"] == int(row.argmax())
        top = details["top_tokens"][step]
        assert [t["id"] for t in top] == list(np.argsort(-row)[:3])
        np.testing.assert_allclose([t["logprob"] for t in top], np.sort(row)[::-1][:3], atol=1e-4)


def test_real_client_sampling_is_seeded(hf_teacher: ServerHandle, tgi_probe) -> None:
    kwargs = {"max_new_tokens": 6, "do_sample": True, "temperature": 1.0, "seed": 7}
    a, b, c = tgi_probe(
        hf_teacher.http_url,
        [{"route": "client", "inputs": PROMPT, "kwargs": kwargs}] * 2
        + [{"route": "client", "inputs": PROMPT, "kwargs": {**kwargs, "seed": 8}}],
    )
    assert a == b and a["details"]["seed"] == 7
    assert c["details"]["seed"] == 8
    assert a["details"]["prefill"] == []  # not asked for


def test_tokenize_and_info(hf_teacher: ServerHandle, tiny_llama_dir: Path, tgi_probe) -> None:
    tokens, info = tgi_probe(
        hf_teacher.http_url, [{"route": "tokenize", "inputs": PROMPT}, {"route": "info"}]
    )
    assert tokens["status"] == 200
    assert [t["id"] for t in tokens["body"]] == TextTokenizer(tiny_llama_dir).encode(PROMPT).ids
    assert "".join(PROMPT[t["start"] : t["stop"]] for t in tokens["body"]) == PROMPT
    assert info["status"] == 200
    assert set(info["body"]) >= INFO_REQUIRED
    assert info["body"]["max_total_tokens"] == 512  # the tiny model's position table


def test_errors_use_tgi_statuses(hf_teacher: ServerHandle, tgi_probe) -> None:
    unsupported, too_many, empty_input = tgi_probe(
        hf_teacher.http_url,
        [
            {"route": "client", "inputs": PROMPT, "kwargs": {"top_k": 5}},
            {"route": "client", "inputs": PROMPT, "kwargs": {"max_new_tokens": 10_000}},
            {"route": "generate", "inputs": "x", "kwargs": {"repetition_penalty": 1.3}},
        ],
    )
    assert unsupported["error"] == "ValidationError" and "top_k" in unsupported["message"]
    assert too_many["error"] == "ValidationError" and "max_new_tokens" in too_many["message"]
    assert empty_input["error"] == "ValidationError"
    assert "repetition_penalty" in empty_input["message"]


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidArgument("bad"), 422, "validation"),
        (Unimplemented("no top-k"), 422, "validation"),
        (FailedPrecondition("re-tokenised"), 422, "validation"),
        (ResourceExhausted("queue full", retry_after_s=2.4), 429, "overloaded"),
        (Unavailable("draining", retry_after_s=1.0), 503, "unavailable"),
        (Unauthenticated("no token"), 401, "unauthenticated"),
        (PermissionDenied("no generate"), 403, "permission_denied"),
        (Internal("forward failed"), 424, "generation"),
        (DeadlineExceeded("too late"), 424, "generation"),
        (Cancelled("gone"), 424, "generation"),
    ],
)
def test_teacher_errors_become_tgi_error_bodies(error, status: int, kind: str) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": error.message, "error_type": kind}
    hint = getattr(error, "retry_after_s", None)
    assert response.headers.get("retry-after") == (None if hint is None else str(round(hint)))


def test_tgi_routes_use_the_job_tokens(
    tiny_llama_dir: Path, make_hf_config, tgi_probe, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "jobs:\n"
        "  - {name: writer, token: writer-token-0123456789}\n"
        "  - {name: grader, token: grader-token-0123456789, allow: [score]}\n"
    )
    with start_server(make_hf_config(tiny_llama_dir, tokens_file=str(tokens))) as handle:
        writer = {"Authorization": "Bearer writer-token-0123456789"}
        grader = {"Authorization": "Bearer grader-token-0123456789"}
        scoring = {"max_new_tokens": 0, "decoder_input_details": True}
        anonymous, wrong, written, refused, scored, info = tgi_probe(
            handle.http_url,
            [
                {"route": "client", "inputs": PROMPT, "kwargs": {"max_new_tokens": 2}},
                {"route": "info", "headers": {"Authorization": "Bearer not-a-known-token-00"}},
                {"route": "client", "inputs": PROMPT, "kwargs": {"max_new_tokens": 2},
                 "headers": writer},
                {"route": "client", "inputs": PROMPT, "kwargs": {"max_new_tokens": 2},
                 "headers": grader},
                {"route": "generate", "inputs": PROMPT, "kwargs": scoring, "headers": grader},
                {"route": "info", "headers": grader},
            ],
        )  # fmt: skip
    assert anonymous["error"] == "UnknownError" and "token" in anonymous["message"]
    assert wrong["status"] == 401 and wrong["body"]["error_type"] == "unauthenticated"
    assert written["details"]["generated_tokens"] == 2
    # text-generation 0.7.0 files a 403 under ShardNotReadyError (its Inference-API heritage).
    assert refused["error"] == "ShardNotReadyError"
    assert "may not call generate" in refused["message"]
    assert scored["details"]["generated_tokens"] == 0 and len(scored["details"]["prefill"]) > 1
    assert info["status"] == 200
