"""Server lifecycle: health NOT_SERVING -> SERVING on start, drain and exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tropd.teacher.backends import load_backend
from tropd.teacher.client import TeacherClient, TeacherRpcError
from tropd.teacher.server import TeacherServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, what: str, limit_s: float = 60.0) -> None:
    """Poll until `predicate()` holds; the limit only guards against a hung test."""
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class GatedBackend:
    """A real backend whose warm-up waits for the test to open the gate."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self._inner, self._gate = inner, gate

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def warmup(self) -> None:
        self._gate.wait(30)
        self._inner.warmup()


def test_health_not_serving_until_warm_then_serving(tiny_llama_dir, make_config) -> None:
    gate = threading.Event()
    backend = GatedBackend(load_backend("hf", model_path=str(tiny_llama_dir)), gate)
    server = TeacherServer(make_config(tiny_llama_dir), backend)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.bind(), loop).result()
    loading = asyncio.run_coroutine_threadsafe(server.load(), loop)
    target = f"127.0.0.1:{server.grpc_port}"
    try:
        for service in ("", "tropd.teacher.v1.Teacher"):
            assert health(target, service) == NOT_SERVING
        with TeacherClient(target, max_retries=0) as client:
            with pytest.raises(TeacherRpcError) as exc:
                client.score([[1, 2, 3]], 1)
            # The client's health check keeps a loading replica out of rotation: the call
            # fails on the client side (the server itself would answer UNAVAILABLE "loading").
            assert exc.value.code == grpc.StatusCode.UNAVAILABLE and "unhealthy" in str(exc.value)
            gate.set()
            loading.result(timeout=60)
            assert health(target) == SERVING and health(target, "tropd.teacher.v1.Teacher") == 1
            assert client.score([[1, 2, 3]], 1)[0].logprobs.shape == (2,)
    finally:
        gate.set()
        asyncio.run_coroutine_threadsafe(server.stop(5.0), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert health_after_stop_refused(target)


def health_after_stop_refused(target: str) -> bool:
    try:
        health(target)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False


def in_flight(http_port: int) -> float:
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^teacher_requests_in_flight (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_in_flight_work_and_exits_zero(tiny_llama_dir) -> None:
    cmd = [
        sys.executable, "-m", "tropd.teacher.cli", "serve", "--model", str(tiny_llama_dir),
        "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
        "--max-batch-tokens", "64", "--drain-grace-s", "120",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        while "teacher listening" not in line:
            assert line, f"server exited early with {proc.wait()}"
            line = proc.stdout.readline()
        grpc_port, http_port = map(int, re.search(r":(\d+), http (\d+)", line).groups())
        target = f"127.0.0.1:{grpc_port}"
        wait_for(lambda: health(target) == SERVING, "SERVING")

        # Four prompts of 3 + 300 tokens, each over the 64-token budget: four sequential
        # generations, still running when SIGTERM arrives.
        client = TeacherClient(target, timeout=120, max_retries=0)
        with ThreadPoolExecutor(1) as pool:
            drafts = pool.submit(client.generate, [[1, 5, 6]] * 4, max_new_tokens=300, seed=3)
            wait_for(lambda: in_flight(http_port) >= 1, "the generate call to be in flight")
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: health(target) == NOT_SERVING, "NOT_SERVING after SIGTERM")
            with pytest.raises(TeacherRpcError) as exc:
                client.score([[1, 2, 3]], 1)
            assert exc.value.code == grpc.StatusCode.UNAVAILABLE
            assert not drafts.done(), "the in-flight call finished before the drain was tested"
            results = drafts.result()
        assert [len(r.ids) for r in results] == [300] * 4
        assert all(np.isfinite(r.logprobs).all() for r in results)
        assert proc.wait(timeout=120) == 0
        assert "drained" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
