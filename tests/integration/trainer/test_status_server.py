"""status_server: real uvicorn threads on loopback, queried over HTTP with httpx."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tropd.trainer.run_status import TrainerStatus
from tropd.trainer.status_server import StatusServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[TrainerStatus, httpx.Client]]:
    status = TrainerStatus("toy-run", "/runs/toy", total_steps=10, clock=clock)
    with (
        StatusServer(status, port=0) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield status, client


def test_livez_and_initial_status(served: tuple[TrainerStatus, httpx.Client]) -> None:
    _, client = served
    assert client.get("/livez").status_code == 200
    body = client.get("/v1/status").json()
    assert body["run_name"] == "toy-run" and body["run_dir"] == "/runs/toy"
    assert body["state"] == "starting" and body["step"] == 0 and body["total_steps"] == 10
    assert body["eta_seconds"] is None and body["last_eval"] is None
    assert body["last_checkpoint"] is None


def test_status_follows_the_loop(
    served: tuple[TrainerStatus, httpx.Client], clock: FakeClock
) -> None:
    status, client = served
    status.set_state("training")
    status.update_step(1, {"loss/total": 2.0, "train/grad_norm": 1.5})
    clock.now += 10.0
    status.update_step(3, {"loss/total": 1.0, "train/grad_norm": 0.5, "note": "text is ignored"})
    status.update_eval(3, 0.25)
    status.mark_checkpoint(3)
    clock.now += 6.0

    body = client.get("/v1/status").json()
    assert body["state"] == "training" and body["step"] == 3
    assert body["eta_seconds"] == pytest.approx(7 * 5.0)  # 7 steps left at 10 s / 2 steps
    assert body["last_eval"] == {"step": 3, "accuracy": 0.25}
    assert body["last_checkpoint"] == {"step": 3, "age_seconds": 6.0}
    assert body["metrics"] == {"loss/total": 1.0, "train/grad_norm": 0.5}


def test_prometheus_metrics(served: tuple[TrainerStatus, httpx.Client], clock: FakeClock) -> None:
    status, client = served
    metrics = {
        "loss/total": 0.75,
        "loss/opd": 0.5,
        "loss/outlier_fkl": 0.25,
        "train/trust_fraction": 0.9,
        "train/grad_norm": 1.25,
        "perf/tokens_per_s": 1234.0,
        "perf/step_s": 2.5,
        "perf/teacher_s": 0.05,
        "perf/teacher_queue_s": 0.01,
        "train/skipped": 0,
    }
    status.update_step(1, metrics)
    status.update_step(2, {**metrics, "train/skipped": 1, "loss/total": float("nan")})
    status.update_step(3, {**metrics, "train/skipped": True})
    status.update_eval(2, 0.5)
    status.mark_checkpoint(2)
    clock.now += 42.0
    status.set_state("evaluating")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("trainer_step", ())] == 3
    assert samples[("trainer_total_steps", ())] == 10
    assert samples[("trainer_loss", (("term", "total"),))] == 0.75
    assert samples[("trainer_loss", (("term", "outlier_fkl"),))] == 0.25
    assert samples[("trainer_trust_fraction", ())] == 0.9
    assert samples[("trainer_grad_norm", ())] == 1.25
    assert samples[("trainer_tokens_per_second", ())] == 1234.0
    assert samples[("trainer_step_duration_seconds", ())] == 2.5
    assert samples[("trainer_teacher_latency_seconds", ())] == 0.05
    assert samples[("trainer_teacher_queue_seconds", ())] == 0.01
    assert samples[("trainer_skipped_steps_total", ())] == 2
    assert samples[("trainer_eval_accuracy", ())] == 0.5
    assert samples[("trainer_eval_step", ())] == 2
    assert samples[("trainer_checkpoint_age_seconds", ())] == 42.0
    assert samples[("trainer_state", (("trainer_state", "evaluating"),))] == 1
    assert samples[("trainer_state", (("trainer_state", "training"),))] == 0
    assert samples[("trainer_run_info", (("run_dir", "/runs/toy"), ("run_name", "toy-run")))] == 1


def test_absent_values_are_absent(served: tuple[TrainerStatus, httpx.Client]) -> None:
    _, client = served
    names = {name for name, _ in _samples(client.get("/metrics").text)}
    assert {"trainer_step", "trainer_skipped_steps_total"} <= names
    assert not names & {
        "trainer_eval_accuracy",
        "trainer_checkpoint_age_seconds",
        "trainer_grad_norm",
        "trainer_eta_seconds",
    }


def test_non_finite_values(served: tuple[TrainerStatus, httpx.Client]) -> None:
    status, client = served
    status.update_step(1, {"loss/total": float("nan"), "train/grad_norm": float("inf")})
    body = client.get("/v1/status").json()
    assert body["metrics"] == {"loss/total": None, "train/grad_norm": None}
    samples = _samples(client.get("/metrics").text)
    assert math.isnan(samples[("trainer_loss", (("term", "total"),))])
    assert samples[("trainer_grad_norm", ())] == math.inf


def test_unknown_state_is_rejected() -> None:
    status = TrainerStatus("x", "/x", total_steps=1)
    with pytest.raises(ValueError, match="known: starting, training"):
        status.set_state("sleeping")
    status.set_state("failed", detail="teacher unavailable")
    snap = status.snapshot()
    assert snap.state == "failed" and snap.detail == "teacher unavailable"


def test_two_servers_keep_separate_registries() -> None:
    a = TrainerStatus("run-a", "/a", total_steps=5)
    b = TrainerStatus("run-b", "/b", total_steps=7)
    a.update_step(4, {"loss/total": 1.0})
    with StatusServer(a) as server_a, StatusServer(b) as server_b:
        assert server_a.port != server_b.port
        text_a = httpx.get(server_a.url + "/metrics", timeout=10).text
        text_b = httpx.get(server_b.url + "/metrics", timeout=10).text
    assert _samples(text_a)[("trainer_step", ())] == 4
    assert _samples(text_b)[("trainer_step", ())] == 0
    assert _samples(text_b)[("trainer_total_steps", ())] == 7


def test_stop_closes_the_port() -> None:
    server = StatusServer(TrainerStatus("x", "/x", total_steps=1))
    server.start()
    url = server.url
    assert httpx.get(url + "/livez", timeout=10).status_code == 200
    server.stop()
    server.stop()  # idempotent
    assert not any(t.name == "trainer-status-http" for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/livez", timeout=10)


def test_busy_port_fails_at_start() -> None:
    with StatusServer(TrainerStatus("x", "/x", total_steps=1)) as first:
        second = StatusServer(TrainerStatus("y", "/y", total_steps=1), port=first.port)
        with pytest.raises(OSError):
            second.start()


def test_snapshots_are_consistent_under_concurrent_updates(
    served: tuple[TrainerStatus, httpx.Client],
) -> None:
    """Every response pairs a step with that step's own metrics while the loop writes."""
    status, client = served
    done = threading.Event()

    def loop() -> None:
        step = 0
        while not done.is_set():
            step += 1
            status.update_step(step, {"loss/total": float(step), "train/grad_norm": float(step)})
            time.sleep(0)  # let the server thread have the GIL between updates

    writer = threading.Thread(target=loop)
    writer.start()
    try:
        for _ in range(20):
            body = client.get("/v1/status").json()
            if body["step"]:
                assert body["metrics"]["loss/total"] == body["step"]
            samples = _samples(client.get("/metrics").text)
            if samples[("trainer_step", ())]:
                assert samples[("trainer_grad_norm", ())] == samples[("trainer_step", ())]
    finally:
        done.set()
        writer.join()
