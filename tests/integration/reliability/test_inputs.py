"""Bounded inputs against the real server on loopback: size and nesting limits, range checks,
unparseable gRPC bytes, rate-limited refusal logs, and a bounded hypothesis fuzz of Score,
Generate and the HTTP routes.

Every fuzzed call must get a documented status (docs/architecture.md#errors: never UNKNOWN,
INTERNAL or HTTP 500), the server must stay alive, and a good request interleaved with the fuzz
must keep its exact answer. Examples are derandomized and bounded in number; no deadlines.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tropd.teacher.client import TeacherClient
from tropd.teacher.server import ServerHandle, start_server
from tropd.wire import codec as wire
from tropd.wire.v1 import teacher_pb2 as pb

pytestmark = pytest.mark.reliability

VOCAB = 438  # the tiny models' vocabulary
SCORE = "/tropd.teacher.v1.Teacher/Score"
GENERATE = "/tropd.teacher.v1.Teacher/Generate"
GRPC_OK = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over max_request_tokens, or the message limit
}
HTTP_OK = {200, 413, 422, 429}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TALLY: dict[str, Counter[str]] = {"Score": Counter(), "Generate": Counter(), "HTTP": Counter()}


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path, make_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_config(tiny_llama_dir))
    yield handle
    handle.stop(grace_s=5.0)
    print("\nfuzz statuses:", json.dumps({k: dict(v) for k, v in TALLY.items()}))


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=60)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


GOOD_IDS = np.arange(5, 45, dtype=np.int32)


@pytest.fixture(scope="module")
def good_answer(server: ServerHandle) -> np.ndarray:
    with TeacherClient(server.target, timeout=60, max_retries=0) as client:
        return np.array(client.score([GOOD_IDS], starts=1, top_k=4)[0].topk_logprobs)


def check_alive_and_exact(server: ServerHandle, good_answer: np.ndarray) -> None:
    with TeacherClient(server.target, timeout=60, max_retries=0) as client:
        row = client.score([GOOD_IDS], starts=1, top_k=4)[0]
    assert np.array_equal(row.topk_logprobs, good_answer)
    assert httpx.get(f"{server.http_url}/livez", timeout=30).status_code == 200


def metric(server: ServerHandle, line_start: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


# --- the size and nesting cases -------------------------------------------------------------


def test_oversized_bodies_are_refused_before_parsing_with_413(server: ServerHandle) -> None:
    big = b'{"inputs": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    for route in ("/", "/generate", "/tokenize", "/info", "/v1/jobs"):
        method = "GET" if route in ("/info", "/v1/jobs") else "POST"
        response = httpx.request(method, f"{server.http_url}{route}", content=big, timeout=60)
        assert response.status_code == 413, (route, response.text)
        assert "max_http_body_bytes = 1048576" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(f"{server.http_url}/tokenize", content=chunks(), timeout=60)
    assert response.status_code == 413
    assert httpx.get(f"{server.http_url}/livez").status_code == 200


@pytest.mark.parametrize("depth", [33, 5000, 200_000])
def test_deep_json_is_422_naming_the_depth_limit(server: ServerHandle, depth: int) -> None:
    body = "[" * depth + "]" * depth
    for route in ("/", "/generate", "/tokenize"):
        response = httpx.post(f"{server.http_url}{route}", content=body, timeout=60)
        assert response.status_code == 422, (route, response.text[:200])
        assert "max_json_depth = 32" in response.json()["error"]
    nested: object = "x"
    for _ in range(40):
        nested = {"a": nested}
    response = httpx.post(
        f"{server.http_url}/generate", json={"inputs": "1+1", "parameters": nested}, timeout=60
    )
    assert response.status_code == 422


def test_integers_are_range_checked(server: ServerHandle) -> None:
    url = f"{server.http_url}/generate"
    for params in (
        {"seed": 9223372036854775808, "do_sample": True},
        {"max_new_tokens": 2**31},
        {"top_n_tokens": 2**40},
        {"seed": -1},
    ):
        response = httpx.post(url, json={"inputs": "1+1", "parameters": params}, timeout=60)
        assert response.status_code == 422, (params, response.text)
    ok = {"seed": 2**63 - 1, "do_sample": True, "max_new_tokens": 2}
    assert httpx.post(url, json={"inputs": "1+1", "parameters": ok}, timeout=60).status_code == 200
    nan = httpx.post(url, content=b'{"inputs": "1", "parameters": {"temperature": NaN}}')
    assert nan.status_code == 422 and "not a JSON number" in nan.json()["error"]
    huge = httpx.post(url, content=b'{"inputs": "1", "parameters": {"temperature": 1e400}}')
    assert huge.status_code == 422  # parses as infinity: refused by the schema


def test_unparseable_grpc_is_invalid_argument_counted_and_quiet(
    server: ServerHandle, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    counted = 'teacher_requests_total{method="Score",status="INVALID_ARGUMENT"}'
    before = metric(server, counted)
    with caplog.at_level(logging.WARNING):
        for payload in (b"\xff\xff\xff\xff", b"\x0a\x05\x01", b"\x12" * 50):
            assert raw_call(channel, SCORE, payload) == grpc.StatusCode.INVALID_ARGUMENT
        assert raw_call(channel, GENERATE, b"\x0a\xff") == grpc.StatusCode.INVALID_ARGUMENT
    assert metric(server, counted) == before + 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_messages_over_the_sized_limit_are_refused(server: ServerHandle) -> None:
    # max_request_tokens 4096 and max_candidates 16 (tests' config): ~0.4 MB is the limit.
    ids = np.ones(300_000, np.int32)
    request = pb.ScoreRequest(items=[pb.ScoreItem(ids=wire.to_tensor(ids, np.int32), start=1)])
    with grpc.insecure_channel(server.target) as ch:
        code = raw_call(ch, SCORE, request.SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_refusal_logs_are_rate_limited_and_counted(
    tiny_llama_dir: Path, make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"jobs": [{"name": "a", "token": "a-token-0123456789abcdef"}]}))
    config = make_config(tiny_llama_dir, tokens_file=str(tokens), refusal_log_interval_s=3600)
    with start_server(config) as handle, caplog.at_level(logging.WARNING):
        with TeacherClient(handle.target, timeout=10, max_retries=0) as client:
            for _ in range(30):
                with pytest.raises(Exception, match="UNAUTHENTICATED"):
                    client.info()
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 1
        suppressed = 'teacher_refusal_logs_suppressed_total{reason="missing_token"}'
        assert metric(handle, suppressed) == 29


# --- the fuzz ---------------------------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
# Mostly plausible values (so that some requests pass), sometimes anything an int32 holds.
SPAN = st.one_of(st.integers(0, 12), st.integers(-3, 90), INT32)
START = st.one_of(st.integers(1, 3), st.integers(1, 3), SPAN)
END = st.one_of(st.just(0), st.just(0), SPAN)
TOP_K = st.one_of(st.just(0), st.integers(0, 40), INT32)
DTYPE = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-1, 6))


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    kind = draw(st.integers(0, 9))
    if kind < 6:  # well formed ids, inside the vocabulary but for kind 5
        ids = draw(st.lists(st.integers(0, VOCAB - 1), max_size=80))
        if kind == 5:
            bad = draw(st.sampled_from([-1, VOCAB, 2**31 - 1]))
            ids.insert(draw(st.integers(0, len(ids))), bad)
        return wire.to_tensor(np.asarray(ids, np.int32), np.int32)
    if kind == 6:  # long: alone or together above max_request_tokens (4096)
        n = draw(st.integers(500, 5000))
        return wire.to_tensor(np.full(n, 7, np.int32), np.int32)
    shape = draw(st.lists(st.integers(-2, 90), max_size=3))
    return pb.Tensor(
        dtype=draw(st.integers(0, 6)), shape=shape, data=draw(st.binary(max_size=400))
    )


@st.composite
def valid_score_requests(draw: st.DrawFn) -> bytes:
    """Requests inside every limit (they must all succeed) but for their total size."""
    items = []
    for _ in range(draw(st.integers(1, 3))):
        ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=60))
        start = draw(st.integers(1, len(ids) - 1))
        end = draw(st.one_of(st.just(0), st.integers(start + 1, len(ids))))
        items.append(pb.ScoreItem(ids=wire.to_tensor(np.asarray(ids, np.int32), np.int32),
                                  start=start, end=end))  # fmt: skip
    request = pb.ScoreRequest(
        items=items,
        top_k=draw(st.integers(0, 32)),
        return_logsumexp=draw(st.booleans()),
        return_entropy=draw(st.booleans()),
        return_rank=draw(st.booleans()),
        logprob_dtype=draw(st.sampled_from([0, 1, 2])),
    )
    return request.SerializeToString()


@st.composite
def score_requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 2)) == 0:
        return draw(valid_score_requests())
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))  # not a message at all
    items = []
    for _ in range(draw(st.one_of(st.just(1), st.integers(0, 4)))):
        item = pb.ScoreItem(ids=draw(tensors()), start=draw(START), end=draw(END))
        if draw(st.integers(0, 5)) == 0:
            item.candidates.CopyFrom(draw(tensors()))
        items.append(item)
    request = pb.ScoreRequest(
        items=items,
        top_k=draw(TOP_K),
        return_logsumexp=draw(st.booleans()),
        return_entropy=draw(st.booleans()),
        return_rank=draw(st.booleans()),
        logprob_dtype=draw(DTYPE),
    )
    return request.SerializeToString()


@st.composite
def generate_requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    if draw(st.integers(0, 2)) == 0:  # inside every limit: must succeed
        prompts = draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20),
                                min_size=1, max_size=2))  # fmt: skip
        valid = pb.GenerateRequest(
            prompts=[wire.to_tensor(np.asarray(p, np.int32), np.int32) for p in prompts],
            max_new_tokens=draw(st.integers(1, 6)),
            temperature=draw(st.floats(0, 2)),
            top_p=draw(st.floats(0.05, 1)),
            stop_ids=draw(st.lists(st.integers(0, VOCAB - 1), max_size=2)),
        )
        if draw(st.booleans()):
            valid.seed = draw(st.integers(-(2**63), 2**63 - 1))
        return valid.SerializeToString()
    request = pb.GenerateRequest(
        prompts=draw(st.lists(tensors(), max_size=3)),
        max_new_tokens=draw(st.one_of(st.integers(1, 8), st.integers(-2, 70), INT32)),
        stop_ids=draw(st.lists(st.integers(-3, VOCAB + 3), max_size=3)),
        logprob_dtype=draw(DTYPE),
    )
    for name in ("temperature", "top_p"):
        if draw(st.booleans()):
            setattr(request, name, draw(st.one_of(st.floats(0, 1), st.floats(width=32))))
    if draw(st.booleans()):
        request.seed = draw(st.integers(-(2**63), 2**63 - 1))
    return request.SerializeToString()


@given(payload=score_requests())
@FUZZ
def test_fuzz_score(server, channel, good_answer, payload: bytes) -> None:
    code = raw_call(channel, SCORE, payload)
    TALLY["Score"][code.name] += 1
    assert code in GRPC_OK, code
    check_alive_and_exact(server, good_answer)


@given(payload=generate_requests())
@settings(FUZZ, max_examples=80)
def test_fuzz_generate(server, channel, good_answer, payload: bytes) -> None:
    code = raw_call(channel, GENERATE, payload)
    TALLY["Generate"][code.name] += 1
    assert code in GRPC_OK, code
    check_alive_and_exact(server, good_answer)


JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
        st.text(max_size=30),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)  # fmt: skip
PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-2, 70), st.integers(-(2**64), 2**64)),
        "seed": st.one_of(st.integers(-(2**64), 2**64), st.none()),
        "temperature": st.one_of(st.floats(allow_nan=False), st.none()),
        "top_p": st.floats(allow_nan=False),
        "top_n_tokens": st.integers(-2, 2**33),
        "do_sample": st.booleans(),
        "details": st.booleans(),
        "decoder_input_details": st.booleans(),
        "return_full_text": st.booleans(),
        "stop": st.lists(st.text(max_size=4), max_size=2),
        "best_of": st.integers(-2, 4),
    },
)
BODIES = st.one_of(
    st.builds(lambda text, p: {"inputs": text, "parameters": p}, st.text(max_size=60), PARAMETERS),
    JSON,
    st.binary(max_size=200),
)
ROUTES = st.sampled_from(
    [("POST", "/"), ("POST", "/generate"), ("POST", "/tokenize"), ("GET", "/info"),
     ("GET", "/v1/info"), ("GET", "/v1/jobs"), ("GET", "/metrics"), ("GET", "/readyz")]
)  # fmt: skip


@given(route=ROUTES, body=BODIES)
@FUZZ
def test_fuzz_http_routes(server, good_answer, route: tuple[str, str], body: object) -> None:
    method, path = route
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.request(method, f"{server.http_url}{path}", content=content, timeout=60)
    TALLY["HTTP"][str(response.status_code)] += 1
    assert response.status_code in HTTP_OK, (path, response.status_code, response.text[:300])
    check_alive_and_exact(server, good_answer)
