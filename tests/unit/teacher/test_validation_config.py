"""Request validation, configuration resolution and the error -> status mapping (no server)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from pydantic import ValidationError

from tropd.errors import ConfigError
from tropd.teacher.config import load_config
from tropd.teacher.errors import (
    InvalidArgument,
    ResourceExhausted,
    Unimplemented,
    to_status,
)
from tropd.teacher.validation import validate_generate, validate_score
from tropd.wire import codec as wire
from tropd.wire.types import RETRY_AFTER_KEY, Capabilities, Limits
from tropd.wire.v1 import teacher_pb2 as pb

LIMITS = Limits(
    vocab_size=100,
    max_sequence_length=64,
    max_top_k=8,
    max_candidates=4,
    max_request_tokens=200,
    max_new_tokens=16,
    capabilities=Capabilities(),
)


def item(ids, start=1, end=0, candidates=None) -> pb.ScoreItem:
    it = pb.ScoreItem(ids=wire.to_tensor(np.asarray(ids, np.int32)), start=start, end=end)
    if candidates is not None:
        it.candidates.CopyFrom(wire.to_tensor(np.asarray(candidates, np.int32)))
    return it


def test_valid_score_request_becomes_tasks() -> None:
    request = pb.ScoreRequest(
        items=[item([1, 2, 3, 4]), item([5, 6, 7], start=2, end=3, candidates=[[1, 2]])],
        top_k=3,
        logprob_dtype=pb.DTYPE_FLOAT16,
        return_entropy=True,
    )
    work = validate_score(request, LIMITS)
    assert [(t.start, t.end, t.top_k) for t in work.tasks] == [(1, 4, 3), (2, 3, 3)]
    assert work.tasks[1].candidates.tolist() == [[1, 2]]
    assert work.tasks[0].want_entropy and not work.tasks[0].want_rank
    assert work.logprob_dtype == np.float16 and work.num_tokens == 7


SCORE_ERRORS = [
    (pb.ScoreRequest(), InvalidArgument, ["items", "empty batch"]),
    (pb.ScoreRequest(items=[item([])]), InvalidArgument, ["items[0].ids", "empty sequence"]),
    (
        pb.ScoreRequest(items=[item([1, 2]), item([1, 100, 3])]),
        InvalidArgument,
        ["items[1].ids[1] = 100", "[0, 100)"],
    ),
    (pb.ScoreRequest(items=[item([1, -4])]), InvalidArgument, ["items[0].ids[1] = -4"]),
    (pb.ScoreRequest(items=[item([1, 2], start=0)]), InvalidArgument, ["items[0].start = 0"]),
    (pb.ScoreRequest(items=[item([1, 2], end=5)]), InvalidArgument, ["items[0].end = 5", "2"]),
    (pb.ScoreRequest(items=[item([1, 2, 3], start=3)]), InvalidArgument, ["start = 3", "end"]),
    (pb.ScoreRequest(items=[item([1, 2])], top_k=9), InvalidArgument, ["top_k = 9", "8"]),
    (
        pb.ScoreRequest(items=[item([1, 2, 3], candidates=[[1]])]),
        InvalidArgument,
        ["items[0].candidates", "[1, 1]", "expected [2, C]"],
    ),
    (
        pb.ScoreRequest(items=[item([1, 2], candidates=[[1, 2, 3, 4, 5]])]),
        InvalidArgument,
        ["5 candidates", "max_candidates = 4"],
    ),
    (
        pb.ScoreRequest(items=[item([1, 2], candidates=[[1, 300]])]),
        InvalidArgument,
        ["items[0].candidates[0, 1] = 300"],
    ),
    (pb.ScoreRequest(items=[item([1] * 65)]), InvalidArgument, ["65", "max_sequence_length = 64"]),
    (
        pb.ScoreRequest(items=[item([1] * 60) for _ in range(4)]),
        ResourceExhausted,
        ["240 tokens", "max_request_tokens = 200"],
    ),
    (
        pb.ScoreRequest(items=[item([1, 2])], logprob_dtype=pb.DTYPE_INT32),
        InvalidArgument,
        ["logprob_dtype = DTYPE_INT32"],
    ),
    (pb.ScoreRequest(items=[item([1, 2])], logprob_dtype=7), InvalidArgument, ["logprob_dtype"]),
    (
        pb.ScoreRequest(items=[pb.ScoreItem(ids=wire.to_tensor(np.ones(2, np.float32)))]),
        InvalidArgument,
        ["items[0].ids", "DTYPE_FLOAT32"],
    ),
]


@pytest.mark.parametrize(("request_", "error", "words"), SCORE_ERRORS)
def test_score_rejections_name_field_value_and_limit(request_, error, words) -> None:
    with pytest.raises(error) as info:
        validate_score(request_, LIMITS)
    for word in words:
        assert word in info.value.message


def gen(prompts=([1, 2],), **kw) -> pb.GenerateRequest:
    kw.setdefault("max_new_tokens", 4)
    return pb.GenerateRequest(
        prompts=[wire.to_tensor(np.asarray(p, np.int32)) for p in prompts], **kw
    )


GENERATE_ERRORS = [
    (gen(prompts=()), InvalidArgument, ["prompts", "empty batch"]),
    (gen(prompts=([],)), InvalidArgument, ["prompts[0]", "empty prompt"]),
    (gen(max_new_tokens=0), InvalidArgument, ["max_new_tokens = 0"]),
    (gen(max_new_tokens=17), InvalidArgument, ["max_new_tokens = 17", "16"]),
    (gen(temperature=-0.5), InvalidArgument, ["temperature = -0.5"]),
    (gen(top_p=0.0), InvalidArgument, ["top_p = 0.0", "(0, 1]"]),
    (gen(top_p=1.5), InvalidArgument, ["top_p = 1.5"]),
    (gen(prompts=([1] * 60,), max_new_tokens=8), InvalidArgument, ["60 + max_new_tokens 8"]),
    (gen(prompts=([1, 100],)), InvalidArgument, ["prompts[0][1] = 100"]),
    (gen(stop_ids=[101]), InvalidArgument, ["stop_ids[0] = 101"]),
    (gen(prompts=[[1] * 40] * 5), ResourceExhausted, ["max_request_tokens = 200"]),
]


@pytest.mark.parametrize(("request_", "error", "words"), GENERATE_ERRORS)
def test_generate_rejections_name_field_value_and_limit(request_, error, words) -> None:
    with pytest.raises(error) as info:
        validate_generate(request_, LIMITS)
    for word in words:
        assert word in info.value.message


def test_generate_seeds_differ_per_prompt_and_defaults_apply() -> None:
    work = validate_generate(gen(prompts=([1], [1]), seed=7), LIMITS)
    assert [t.seed for t in work.tasks] == [7, 8]
    assert work.tasks[0].temperature == 1.0 and work.tasks[0].top_p == 1.0
    assert validate_generate(gen(), LIMITS).tasks[0].seed is None


def test_unsupported_capability_is_unimplemented() -> None:
    limits = Limits(**{**vars(LIMITS), "capabilities": Capabilities(top_k=False)})
    with pytest.raises(Unimplemented, match="top_k"):
        validate_score(pb.ScoreRequest(items=[item([1, 2])], top_k=2), limits)


def test_status_mapping_never_unknown() -> None:
    status = to_status(ResourceExhausted("full", retry_after_s=0.25))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.trailing_metadata == ((RETRY_AFTER_KEY, "250"),)
    status = to_status(KeyError("boom"))
    assert status.code == grpc.StatusCode.INTERNAL and "KeyError" in status.message


def test_config_env_then_flags() -> None:
    env = {"TEACHER_MODEL": "/m", "TEACHER_PORT": "6000", "TEACHER_MAX_DELAY_MS": "2.5"}
    config = load_config({"port": "7000", "max_top_k": None}, env)
    assert (config.model, config.port, config.max_delay_ms, config.max_top_k) == (
        "/m", 7000, 2.5, 128,
    )  # fmt: skip
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "flags", "words"),
    [
        ({}, {}, ["model", "TEACHER_MODEL", "--model"]),
        ({"TEACHER_MODEL": "m", "TEACHER_PORT": "abc"}, {}, ["port", "'abc'", "TEACHER_PORT"]),
        ({"TEACHER_MODEL": "m"}, {"max_batch_tokens": "0"}, ["max_batch_tokens", "--max-batch"]),
        ({"TEACHER_MODEL": "m"}, {"dtype": "int8"}, ["dtype", "'int8'"]),
        ({"TEACHER_MODEL": "m", "TEACHER_BACKEND": "nope"}, {}, ["unknown backend", "hf"]),
        ({"TEACHER_MODEL": "m"}, {"max_request_tokens": 10, "max_queue_tokens": 5}, ["never"]),
    ],
)
def test_config_errors_are_clear(env, flags, words) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(flags, env)
    for word in words:
        assert word in str(info.value)


def test_config_forbids_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="max_batch_tokenz"):
        load_config({"model": "m", "max_batch_tokenz": 3}, {})


# --- safe defaults --------------------------------------------------------------------------


def test_binds_loopback_unless_told_and_an_open_host_needs_auth() -> None:
    from tropd.teacher.config import is_loopback, load_config

    assert load_config({"model": "m"}, environ={}).host == "127.0.0.1"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "10.1.2.3", "teacher.internal"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="tokens file .*--allow-anonymous"):
            load_config({"model": "m", "host": host}, environ={})
        assert load_config({"model": "m", "host": host, "tokens_file": "t.yaml"}, environ={})
        assert load_config({"model": "m", "host": host, "allow_anonymous": True}, environ={})
    env = {"TEACHER_HOST": "0.0.0.0", "TEACHER_ALLOW_ANONYMOUS": "true"}
    assert load_config({"model": "m"}, environ=env).host == "0.0.0.0"


def test_message_limits_follow_the_request_limits() -> None:
    from tropd.teacher.config import load_config, message_limits

    small = message_limits(load_config({"model": "m", "max_request_tokens": 4096}, environ={}))
    big = message_limits(load_config({"model": "m"}, environ={}))
    # ids and candidates of a largest request, plus framing
    assert 4 * 4096 * (1 + 256) < small.receive < big.receive < 512 * 2**20
    assert small.send >= small.receive
    fixed = load_config({"model": "m", "max_message_bytes": 2**20}, environ={})
    assert message_limits(fixed).receive == 2**20


def test_serve_refuses_an_open_host_without_tokens_exit_2(capsys) -> None:
    from tropd.teacher.cli import main

    assert main(["serve", "--model", "m", "--host", "0.0.0.0"]) == 2
    assert "--allow-anonymous" in capsys.readouterr().err
