"""A teacher service as a local subprocess on free loopback ports (the demo and the benchmarks).

Starts `python -m teacher.cli serve` and returns at once; callers wait for readiness with
`teacher_link.wait_for_teacher` (or their own client), and stop it with `stop()`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalTeacher:
    proc: subprocess.Popen
    target: str  # host:port of the gRPC port
    http_url: str  # the HTTP side port (health, metrics, TGI API)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the server drains in-flight work), then wait for the exit."""
        self.proc.terminate()
        self.proc.wait(timeout=timeout_s)


def start_local_teacher(model: str, log_path: Path, extra_args: Sequence[str] = ()) -> LocalTeacher:
    """Start a one-thread teacher on `model`, logging to `log_path`.

    Args:
        model: a model folder (resolve `builtin:NAME` first with `setup.resolve_model_path`).
        log_path: where the server's stdout and stderr go.
        extra_args: further `tropd-teacher serve` flags (e.g. --tokens-file PATH).
    """
    port, http_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "tropd.teacher.cli", "serve", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--http-port", str(http_port), "--threads", "1", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    return LocalTeacher(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}")
