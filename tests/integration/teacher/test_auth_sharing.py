"""One teacher, many jobs, over the real server on loopback: job tokens, rights, hot reload,
weighted fair sharing in tokens, per-job quotas, /v1/jobs and per-job metrics."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tropd.teacher.auth import TokensFileError
from tropd.teacher.cli import main as cli_main
from tropd.teacher.client import TeacherClient, TeacherRpcError
from tropd.teacher.server import ServerHandle, start_server

TOKENS = {name: f"{name}-token-0123456789abcdef" for name in ("alpha", "beta", "gamma")}
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def write_tokens(path: Path, jobs: list[dict]) -> Path:
    path.write_text(json.dumps({"jobs": jobs}))  # JSON is YAML
    return path


def base_jobs() -> list[dict]:
    return [
        {"name": "alpha", "token": TOKENS["alpha"], "weight": 1},
        {"name": "beta", "token": TOKENS["beta"], "weight": 1, "allow": ["score"]},
        {"name": "gamma", "token": TOKENS["gamma"], "weight": 2},
    ]


@pytest.fixture(scope="module")
def tokens_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokens(tmp_path_factory.mktemp("auth") / "tokens.yaml", base_jobs())


@pytest.fixture(scope="module")
def auth_server(tiny_llama_dir: Path, tokens_path: Path, make_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_config(tiny_llama_dir, tokens_file=str(tokens_path)))
    yield handle
    handle.stop(grace_s=5.0)


def ids(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 400, size=n, dtype=np.int32)


def call_code(target: str, token: str | None, method: str = "score") -> grpc.StatusCode:
    with TeacherClient(target, token=token, timeout=20, max_retries=0) as client:
        try:
            if method == "score":
                client.score([ids()], 1)
            elif method == "generate":
                client.generate([ids(4)], max_new_tokens=2, temperature=0)
            else:
                client.info()
        except TeacherRpcError as exc:
            return exc.code
    return grpc.StatusCode.OK


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- identity and rights ------------------------------------------------------------------------


def test_no_token_and_wrong_token_are_unauthenticated(auth_server, caplog) -> None:
    target = auth_server.target
    caplog.set_level(logging.INFO)
    assert call_code(target, None) == UNAUTH
    assert call_code(target, None, "info") == UNAUTH
    assert call_code(target, "not-a-job-token-at-all-xyz") == UNAUTH
    with grpc.insecure_channel(target) as channel:  # a header that is not a bearer token
        stub_call = channel.unary_unary("/tropd.teacher.v1.Teacher/GetModelInfo")
        with pytest.raises(grpc.RpcError) as garbage:
            stub_call(b"", metadata=[("authorization", "Basic c2VjcmV0")], timeout=10)
    assert garbage.value.code() == UNAUTH
    assert call_code(target, TOKENS["alpha"]) == grpc.StatusCode.OK
    assert "not-a-job-token-at-all-xyz" not in caplog.text
    assert all(token not in caplog.text for token in TOKENS.values())


def test_oversized_metadata_is_refused_and_the_server_keeps_serving(auth_server) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        call = channel.unary_unary("/tropd.teacher.v1.Teacher/GetModelInfo")
        with pytest.raises(grpc.RpcError) as huge:
            call(b"", metadata=[("authorization", "Bearer " + "x" * 64_000)], timeout=10)
    assert huge.value.code() != grpc.StatusCode.OK
    assert call_code(auth_server.target, TOKENS["alpha"], "info") == grpc.StatusCode.OK


def test_health_needs_no_token(auth_server) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_job_without_the_right_is_permission_denied(auth_server) -> None:
    target = auth_server.target
    assert call_code(target, TOKENS["beta"], "generate") == grpc.StatusCode.PERMISSION_DENIED
    assert call_code(target, TOKENS["beta"], "score") == grpc.StatusCode.OK
    assert call_code(target, TOKENS["alpha"], "generate") == grpc.StatusCode.OK


def test_jobs_endpoint_needs_a_token_and_shows_no_secrets(auth_server) -> None:
    url = auth_server.http_url + "/v1/jobs"
    assert http_get(url)[0] == 401
    assert http_get(url, "wrong-token-0123456789")[0] == 401
    status, body = http_get(url, TOKENS["gamma"])
    assert status == 200
    reply = json.loads(body)
    assert reply["auth_enforced"] is True
    assert {j["name"]: j["weight"] for j in reply["jobs"]} == {
        "alpha": 1.0, "beta": 1.0, "gamma": 2.0
    }  # fmt: skip
    assert all(token not in body for token in TOKENS.values())


def test_per_job_metrics_carry_the_job_label(auth_server) -> None:
    call_code(auth_server.target, TOKENS["gamma"])
    _, text = http_get(auth_server.http_url + "/metrics")
    assert 'teacher_job_requests_total{job="gamma",method="Score",status="OK"}' in text
    assert 'teacher_job_scored_tokens_total{job="gamma"}' in text
    assert 'teacher_job_queue_wait_seconds_count{job="gamma"}' in text


def test_revoked_token_is_refused_after_reload(tiny_llama_dir, tmp_path, make_config) -> None:
    path = write_tokens(tmp_path / "tokens.yaml", base_jobs())
    with start_server(make_config(tiny_llama_dir, tokens_file=str(path))) as handle:
        assert call_code(handle.target, TOKENS["alpha"]) == grpc.StatusCode.OK
        # A malformed edit is logged and ignored: the old table stays in force.
        path.write_text("jobs:\n  - name: alpha\n    token: short\n")
        assert handle.server.reload_tokens() is False
        assert call_code(handle.target, TOKENS["alpha"]) == grpc.StatusCode.OK
        # SIGHUP's path: an explicit reload revokes alpha at once.
        write_tokens(path, base_jobs()[1:])
        assert handle.server.reload_tokens() is True
        assert call_code(handle.target, TOKENS["alpha"]) == UNAUTH
        assert call_code(handle.target, TOKENS["gamma"]) == grpc.StatusCode.OK
        # The file watcher: a changed file is picked up without a signal.
        fresh = [{"name": "delta", "token": "delta-token-0123456789abcdef"}]
        write_tokens(path, fresh)
        for _ in range(100):
            if call_code(handle.target, TOKENS["gamma"]) == UNAUTH:
                break
            time.sleep(0.1)
        assert call_code(handle.target, TOKENS["gamma"]) == UNAUTH
        assert call_code(handle.target, "delta-token-0123456789abcdef") == grpc.StatusCode.OK


def test_anonymous_mode_with_a_tokens_file(tiny_llama_dir, tokens_path, make_config) -> None:
    config = make_config(tiny_llama_dir, tokens_file=str(tokens_path), allow_anonymous=True)
    with start_server(config) as handle:
        assert call_code(handle.target, None) == grpc.StatusCode.OK
        assert call_code(handle.target, "wrong-token-0123456789") == UNAUTH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs:\n  - name: a\n    token: aaaaaaaaaaaaaaaa\n    weight: 0\n",
         "line 4: jobs[0].weight"),
        ("jobs:\n  - name: a\n    tokn: aaaaaaaaaaaaaaaa\n", "line 3: jobs[0].tokn"),
        ("jobs:\n  - {name: a, token: aaaaaaaaaaaaaaaa, quotas: {max_in_flight: -1}}\n",
         "jobs[0].quotas.max_in_flight"),
        ("jobs: [\n", "not valid YAML"),
        ("jobs:\n  - {name: a, token: aaaaaaaaaaaaaaaa}\n  - {name: a, token: bbbbbbbbbbbbbbbb}\n",
         "line 3: jobs[1].name: duplicate of jobs[0]"),
    ],
)  # fmt: skip
def test_malformed_tokens_file_refuses_to_start(
    tiny_llama_dir, tmp_path, make_config, capsys, text, expected
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        start_server(make_config(tiny_llama_dir, tokens_file=str(path)))
    code = cli_main(["serve", "--model", str(tiny_llama_dir), "--tokens-file", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "aaaaaaaaaaaaaaaa" not in err


# --- fair sharing and quotas --------------------------------------------------------------------


def _served(http_url: str, token: str) -> dict[str, int]:
    _, body = http_get(http_url + "/v1/jobs", token)
    return {j["name"]: j["served_tokens"] for j in json.loads(body)["jobs"]}


def _wait_served(http_url: str, token: str, total: int, runs: list) -> dict[str, int]:
    """Poll /v1/jobs until `total` tokens were served; a client that died fails the test."""
    while sum((served := _served(http_url, token)).values()) < total:
        for run in runs:
            if run.done():
                run.result()  # raises the client's error
                raise AssertionError("a flooding client stopped early")
        time.sleep(0.05)
    return served


def test_weights_1_1_2_share_served_tokens_under_saturation(
    tiny_llama_dir, tmp_path, make_config
) -> None:
    jobs = [
        {"name": "alpha", "token": TOKENS["alpha"], "weight": 1},
        {"name": "beta", "token": TOKENS["beta"], "weight": 1},
        {"name": "gamma", "token": TOKENS["gamma"], "weight": 2},
    ]
    path = write_tokens(tmp_path / "tokens.yaml", jobs)
    config = make_config(tiny_llama_dir, tokens_file=str(path), max_batch_tokens=256)
    stop = threading.Event()

    def flood(handle: ServerHandle, name: str, seed: int) -> None:
        with TeacherClient(handle.target, token=TOKENS[name], timeout=60) as client:
            rng = np.random.default_rng(seed)
            while not stop.is_set():  # 4 sequences of 32 scored tokens per request
                client.score([rng.integers(4, 400, 33, dtype=np.int32) for _ in range(4)], 1)

    with start_server(config) as handle, ThreadPoolExecutor(24) as pool:
        # Eight requests in flight per job (1024 tokens, more than gamma's quantum of two
        # batches plus the batch in flight) keep every queue non-empty: saturation.
        runs = [
            pool.submit(flood, handle, name, 10 * k + i)
            for k, name in enumerate(TOKENS)
            for i in range(8)
        ]
        token = TOKENS["alpha"]
        before = _wait_served(handle.http_url, token, 3000, runs)  # warm-up: all queues full
        after = _wait_served(handle.http_url, token, sum(before.values()) + 12000, runs)
        stop.set()
        for run in runs:
            run.result()
    delta = {name: after[name] - before[name] for name in TOKENS}
    total = sum(delta.values())
    shares = {name: delta[name] / total for name in delta}
    assert shares["alpha"] == pytest.approx(0.25, abs=0.025), shares
    assert shares["beta"] == pytest.approx(0.25, abs=0.025), shares
    assert shares["gamma"] == pytest.approx(0.50, abs=0.05), shares


def test_flooding_job_is_refused_while_light_job_always_succeeds(
    tiny_llama_dir, tmp_path, make_config
) -> None:
    jobs = [
        {"name": "greedy", "token": TOKENS["alpha"], "quotas": {"max_in_flight": 4}},
        {"name": "light", "token": TOKENS["beta"]},
    ]
    path = write_tokens(tmp_path / "tokens.yaml", jobs)
    # A small server-wide queue too: the flood fills it, yet the light job is admitted.
    config = make_config(tiny_llama_dir, tokens_file=str(path), max_queue_tokens=4096)
    codes: list[grpc.StatusCode] = []
    stop = threading.Event()

    def flood(handle: ServerHandle) -> None:
        with TeacherClient(handle.target, token=TOKENS["alpha"], max_retries=0) as client:
            while not stop.is_set():
                try:
                    client.score([ids(64, seed) for seed in range(16)], 1)
                    codes.append(grpc.StatusCode.OK)
                except TeacherRpcError as exc:
                    codes.append(exc.code)

    with start_server(config) as handle, ThreadPoolExecutor(12) as pool:
        floods = [pool.submit(flood, handle) for _ in range(10)]
        with TeacherClient(handle.target, token=TOKENS["beta"], max_retries=0) as light:
            for seed in range(15):
                assert light.score([ids(20, seed)], 1)[0].logprobs.shape == (19,)
        stop.set()
        # The flood's last calls still hold the greedy job's in-flight slots: a client that
        # honours the retry hint with backoff gets through once they finish.
        with TeacherClient(handle.target, token=TOKENS["alpha"], max_retries=20) as patient:
            assert len(patient.score([ids(64)], 1)) == 1
        for f in floods:
            f.result()
        _, text = http_get(handle.http_url + "/metrics")
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert 'teacher_job_rejections_total{job="greedy",reason="job_in_flight"}' in text
    assert 'job="light"' in text and 'teacher_job_rejections_total{job="light"' not in text
