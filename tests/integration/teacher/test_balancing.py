"""One client over two teacher replicas (real servers on loopback, in this process): gRPC's
round robin with health checking, as the client's service config sets it up. A replica that
reports NOT_SERVING receives no calls until it serves again; a draining replica (the SIGTERM
path, `TeacherServer.stop`) gets no new work while the call it holds completes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from grpc_health.v1 import health_pb2

from tropd.teacher.backends import load_backend
from tropd.teacher.client import HEALTH_SERVICE, TeacherClient
from tropd.teacher.server import ServerHandle, start_server

IDS = [[1, 5, 9, 13, 17, 21, 25]]


class HeldBackend:
    """A real backend whose score waits, once `hold` is set, until the test releases it."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.hold, self.holding, self.release = (threading.Event() for _ in range(3))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def score(self, tasks):  # type: ignore[no-untyped-def]
        if self.hold.is_set():
            self.holding.set()
            self.release.wait(30)
        return self._inner.score(tasks)


def served(handle: ServerHandle, status: str = "OK") -> float:
    return handle.server.state.metrics.requests.labels("Score", status)._value.get()


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30  # a safety stop, not an assertion on time
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture()
def pair(tiny_llama_dir, make_config) -> Iterator[tuple[ServerHandle, ServerHandle, HeldBackend]]:
    held = HeldBackend(load_backend("hf", model_path=str(tiny_llama_dir)))
    a = start_server(make_config(tiny_llama_dir), held)  # type: ignore[arg-type]
    b = start_server(make_config(tiny_llama_dir))
    yield a, b, held
    held.release.set()
    a.stop(grace_s=5.0)
    b.stop(grace_s=5.0)


def set_health(handle: ServerHandle, status: int) -> None:
    health = handle.server._health  # the servicer the server itself flips on load and drain
    asyncio.run_coroutine_threadsafe(health.set(HEALTH_SERVICE, status), handle.loop).result()


def test_round_robin_skips_a_not_serving_replica(pair) -> None:
    a, b, _ = pair
    set_health(a, health_pb2.HealthCheckResponse.NOT_SERVING)
    with TeacherClient(f"ipv4:{a.target},{b.target}", timeout=30, max_retries=0) as client:
        for _ in range(12):
            client.score(IDS, 1)
        assert (served(a), served(b)) == (0.0, 12.0)  # and none refused: A was never asked
        set_health(a, health_pb2.HealthCheckResponse.SERVING)
        for _ in range(200):  # bounded: the health watch brings A back within a few calls
            client.score(IDS, 1)
            if served(a) >= 3:
                break
        assert served(a) >= 3, (served(a), served(b))


def test_a_draining_replica_gets_no_new_work_while_its_call_completes(pair) -> None:
    a, b, held = pair
    balanced = TeacherClient(f"ipv4:{a.target},{b.target}", timeout=30)
    with balanced, TeacherClient(a.target, timeout=30, max_retries=0) as only_a:
        for _ in range(4):
            balanced.score(IDS, 1)
        assert served(a) >= 1 and served(b) >= 1  # both in rotation
        held.hold.set()
        result: list[object] = []
        call = threading.Thread(target=lambda: result.append(only_a.score(IDS, 1)))
        call.start()
        wait_for(held.holding.is_set, "A's call to be computing")
        a_before = served(a)
        drain = threading.Thread(target=a.stop, kwargs={"grace_s": 20.0})
        drain.start()  # what SIGTERM does: NOT_SERVING, refuse new calls, finish accepted work
        wait_for(lambda: a.server.state.draining, "A draining")
        for _ in range(10):
            balanced.score(IDS, 1)  # every call succeeds: none is left on A
        assert served(a) == a_before  # A took no new work
        held.release.set()
        call.join(timeout=30)
        drain.join(timeout=30)
    assert len(result) == 1 and result[0][0].logprobs.shape == (6,)  # type: ignore[index]
    assert served(a) == a_before + 1  # the call it held completed
    print(f"\nduring the drain A refused {served(a, 'UNAVAILABLE'):.0f} calls (retried on B)")
