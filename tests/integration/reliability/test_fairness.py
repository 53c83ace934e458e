"""Fair sharing under closed-loop contention, with real processes on loopback.

A `tropd-teacher serve` subprocess (tiny Llama, --max-batch-tokens 2048) and one client process
per job: jobs a, b, c (weights 1:1:2) each run 4 threads sending 4 x 257-token Score requests
back to back, the probe under which deficit round robin handed one job the whole teacher. Shares
are served-token counts from /v1/jobs over consecutive windows of contention (never wall-clock
assertions). A light job (one 16-token request at a time) runs beside them; how long it waits is
counted in batches, from what the teacher itself reports (`teacher_job_queue_wait_batches`: the
batches dispatched while a sequence waited). Its wait in flood batch times is printed only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tropd.trainer.local_teacher import free_port

pytestmark = pytest.mark.reliability

WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0}
TOKENS = {name: f"{name}-fairness-token-0123456789" for name in [*WEIGHTS, "light"]}
WINDOW_TOKENS = 80 * 2048  # ~80 full batches per window (a few seconds of this teacher)
WINDOWS = 3
LIGHT_REQUESTS = 60

# One job's closed-loop client: THREADS threads, each sending SEQS x LENGTH-token requests back
# to back until the stop file appears or MAX_REQUESTS / MAX_SECONDS run out. Prints one JSON
# line: the queue wait and compute time the teacher reported for each request.
CLIENT = r"""
import json, os, sys, threading, time
import numpy as np
from tropd.teacher.client import TeacherClient
target, token, threads, seqs, length, stop_file = sys.argv[1:7]
threads, seqs, length = int(threads), int(seqs), int(length)
MAX_REQUESTS, MAX_SECONDS = int(sys.argv[7]), 120.0
client = TeacherClient(target, token, timeout=60, max_retries=50)
timings, lock, t0 = [], threading.Lock(), time.monotonic()
def worker(seed):
    rng = np.random.default_rng(seed)
    for _ in range(MAX_REQUESTS):
        if os.path.exists(stop_file) or time.monotonic() - t0 > MAX_SECONDS:
            return
        ids = [rng.integers(4, 400, length, dtype=np.int32) for _ in range(seqs)]
        t = client.score(ids, starts=1).timing
        with lock:
            timings.append((t.queue_seconds, t.compute_seconds))
pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
[p.start() for p in pool]
[p.join() for p in pool]
print(json.dumps(timings))
"""


@pytest.fixture(scope="module")
def teacher(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("fairness")
    tokens = folder / "tokens.yaml"
    jobs = [{"name": n, "token": t, "weight": WEIGHTS.get(n, 1.0)} for n, t in TOKENS.items()]
    tokens.write_text(json.dumps({"jobs": jobs}))
    port, http_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "tropd.teacher.cli", "serve", "--model", str(tiny_llama_dir),
        "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
        "--tokens-file", str(tokens), "--max-batch-tokens", "2048", "--threads", "1",
        "--max-queue-tokens", "1048576",
    ]  # fmt: skip
    log = (folder / "teacher.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, (folder / "teacher.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield f"127.0.0.1:{port}|{url}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def served(url: str) -> dict[str, int]:
    headers = {"authorization": f"Bearer {TOKENS['a']}"}
    body = httpx.get(f"{url}/v1/jobs", headers=headers, timeout=30).json()
    return {job["name"]: job["served_tokens"] for job in body["jobs"]}


def batches_waited(url: str, job: str) -> tuple[float, float, float]:
    """A job's sequences so far: how many, how many rode the first batch dispatched after they
    arrived, and the batches dispatched while they waited, summed."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    name, labels = "teacher_job_queue_wait_batches", f'job="{job}"'
    values = {}
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            values[line.split()[0]] = float(line.split()[-1])
    return (values.get(f"{name}_count{{{labels}}}", 0.0),
            values.get(f'{name}_bucket{{{labels},le="0.0"}}', 0.0),
            values.get(f"{name}_sum{{{labels}}}", 0.0))  # fmt: skip


def forward_totals(url: str) -> tuple[float, float]:
    """Seconds and count of every score forward pass so far (teacher_forward_seconds)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('teacher_forward_seconds_sum{kind="score",outcome="ok"}'):
            total = float(line.split()[-1])
        if line.startswith('teacher_forward_seconds_count{kind="score",outcome="ok"}'):
            count = float(line.split()[-1])
    return total, count


def start_client(target: str, job: str, threads: int, seqs: int, length: int, stop: Path,
                 max_requests: int) -> subprocess.Popen:  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [target, TOKENS[job], threads, seqs, length, stop, max_requests]
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def test_closed_loop_jobs_get_their_weighted_share_and_a_light_job_rides_the_next_batch(
    teacher: str, tmp_path: Path
) -> None:
    target, url = teacher.split("|")
    stop = tmp_path / "stop"
    floods = [start_client(target, job, 4, 4, 257, stop, 10_000) for job in WEIGHTS]
    light = None
    windows: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 120  # a safety stop, not an assertion on time
        while time.monotonic() < deadline and not all(served(url).get(j) for j in WEIGHTS):
            time.sleep(0.1)
        light = start_client(target, "light", 1, 1, 16, stop, LIGHT_REQUESTS)
        forward_before = forward_totals(url)
        flood_before = [batches_waited(url, j) for j in WEIGHTS]
        start = served(url)
        while time.monotonic() < deadline and len(windows) < WINDOWS:
            time.sleep(0.2)
            now = served(url)
            delta = {j: now[j] - start[j] for j in WEIGHTS}
            if sum(delta.values()) >= WINDOW_TOKENS:
                windows.append({j: delta[j] / sum(delta.values()) for j in WEIGHTS})
                start = now
        light_out, light_err = light.communicate(timeout=120)
        forward_after = forward_totals(url)
        flood_after = [batches_waited(url, j) for j in WEIGHTS]
        light_waited = batches_waited(url, "light")
    finally:
        stop.touch()
        for proc in [*floods, *([light] if light else [])]:
            proc.communicate(timeout=120)
    assert len(windows) == WINDOWS, windows
    want = {j: w / sum(WEIGHTS.values()) for j, w in WEIGHTS.items()}
    print(f"\nserved-token shares per window (want {want}): {windows}")
    for shares in windows:
        for job in WEIGHTS:
            assert shares[job] == pytest.approx(want[job], abs=0.05), windows

    # The light job, counted by the teacher: every one of its sequences rode the first batch
    # dispatched after it arrived (it waits for the batch in progress only), while the flood's
    # sequences queued behind several batches each.
    assert light.returncode == 0, light_err[-2000:]
    light_timings = json.loads(light_out)
    assert len(light_timings) == LIGHT_REQUESTS
    count, first_batch, _ = light_waited
    flood_count = sum(a[0] - b[0] for a, b in zip(flood_after, flood_before, strict=True))
    flood_waited = sum(a[2] - b[2] for a, b in zip(flood_after, flood_before, strict=True))
    print(f"\nlight job: {first_batch:.0f} of {count:.0f} sequences rode the first batch after "
          f"arriving; flood sequences meanwhile waited {flood_waited / flood_count:.2f} batches "
          "on average")  # fmt: skip
    assert count == LIGHT_REQUESTS and first_batch == count
    assert flood_waited / flood_count >= 1.0  # there was a queue to skip

    # Informational (wall-clock, never asserted): the light wait in flood batch times.
    light_compute = sum(c for _, c in light_timings)
    seconds = forward_after[0] - forward_before[0] - light_compute
    batches = forward_after[1] - forward_before[1] - len(light_timings)
    batch_s = seconds / batches
    waits = np.array([q for q, _ in light_timings]) / batch_s
    p50, p99 = np.percentile(waits, [50, 99])
    print(f"light job queue wait: p50 {p50:.2f}, p99 {p99:.2f} flood batch times "
          f"({batch_s * 1000:.1f} ms each)")  # fmt: skip
