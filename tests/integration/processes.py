"""Real teacher and trainer processes for the tests that kill, restart and balance them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tropd.trainer.local_teacher import free_port
from tropd.trainer.run_log import read_metrics
from tropd.trainer.world import builtin_world_dir

REPO = Path(__file__).resolve().parents[2]
SCORE_OK = re.compile(r'^teacher_requests_total\{method="Score",status="OK"\} (\S+)$', re.M)


class TeacherProcess:
    """`tropd-teacher serve` of the built-in teacher on fixed loopback ports (a restart reuses
    the address, as a pod behind a headless Service would keep its name)."""

    def __init__(self, folder: Path, name: str = "teacher") -> None:
        self.folder, self.name = folder, name
        self.port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        cmd = [
            sys.executable, "-m", "tropd.teacher.cli", "serve",
            "--model", str(builtin_world_dir() / "teacher"), "--host", "127.0.0.1",
            "--port", str(self.port), "--http-port", str(self.http_port), "--threads", "1",
        ]  # fmt: skip
        log = (self.folder / f"{self.name}-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(600):  # bounded: 60 s
            assert self.proc.poll() is None, self.log()[-3000:]
            try:
                url = f"http://127.0.0.1:{self.http_port}/readyz"
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not get ready")

    def scores_served(self) -> float:
        """Score calls this process answered OK (its own /metrics; 0 after a restart)."""
        text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).text
        found = SCORE_OK.search(text)
        return float(found.group(1)) if found else 0.0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def log(self) -> str:
        return (self.folder / f"{self.name}-{self.starts}.log").read_text()


def start_trainer(args: list[str]) -> subprocess.Popen:
    """`tropd-train ARGS` from the repository root, one thread, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "tropd.trainer.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def steps_logged(run_dir: Path) -> list[int]:
    """The steps a run has written to metrics.jsonl so far."""
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    return [r["step"] for r in rows if "loss/total" in r]


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen) -> None:
    """Poll `check` while the trainer runs; fail with its output if it exits first."""
    deadline = time.monotonic() + 240  # a safety stop, not an assertion on time
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: trainer exited\n" + proc.communicate()[1][-3000:]
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within the limit")
