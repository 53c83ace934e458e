"""TGI fixtures: the isolated `.venv-tgi/` (real `text-generation` client, no torch), built once
per checkout by scripts/build_tgi_venv.sh, and helpers to run code or a teacher inside it.

The client pins huggingface-hub<1.0, which cannot share .venv with transformers 5, so every
test here runs the client or the `tgi` backend as a subprocess of that venv, talking over
loopback to servers in this process. Tests skip only when the venv cannot be built because
the package index is unreachable; any other build failure fails them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tropd.teacher.config import ServerConfig

ROOT = Path(__file__).resolve().parents[3]
VENV_PYTHON = ROOT / ".venv-tgi" / "bin" / "python"
PROBE = Path(__file__).with_name("client_probe.py")
_OFFLINE = re.compile(
    r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|"
    r"No matching distribution found|Could not find a version|ConnectTimeout|ProxyError"
)


def hf_config(model_dir: Path, **overrides: object) -> ServerConfig:
    """An hf-backed teacher on loopback with free ports (the TGI side of these tests)."""
    values: dict[str, object] = {
        "model": str(model_dir), "host": "127.0.0.1", "port": 0, "http_port": 0,
        "max_batch_tokens": 512, "max_top_k": 32, "max_new_tokens": 64, "drain_grace_s": 5.0,
    }  # fmt: skip
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture(scope="session")
def make_hf_config():
    return hf_config


@pytest.fixture(scope="session")
def tgi_python() -> Path:
    """The isolated venv's python (built on first use, ~1 minute; cached in .venv-tgi/)."""
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_tgi_venv.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode != 0:
        tail = (build.stdout + build.stderr)[-2000:]
        if _OFFLINE.search(tail):
            pytest.skip(f"cannot build .venv-tgi (package index unreachable):\n{tail}")
        pytest.fail(f"scripts/build_tgi_venv.sh failed:\n{tail}")
    return VENV_PYTHON


@pytest.fixture(scope="session")
def tgi_probe(tgi_python: Path):
    """`probe(url, calls)`: run calls with the real client in the venv (see client_probe.py)."""

    def probe(url: str, calls: list[dict]) -> list[dict]:
        return run_probe(tgi_python, url, calls)

    return probe


def run_probe(tgi_python: Path, url: str, calls: list[dict]) -> list[dict]:
    run = subprocess.run(
        [str(tgi_python), str(PROBE), url],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@dataclass
class TgiTeacher:
    """A tropd teacher with backend=tgi, running in .venv-tgi as a subprocess."""

    process: subprocess.Popen[str]
    target: str
    http_port: int
    startup_output: list[str]


def _read_ports(process: subprocess.Popen[str]) -> tuple[int, int, list[str]]:
    seen: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        found = re.search(r"grpc [\w.\[\]:]+:(\d+), http (\d+)", line)
        if found:
            grpc_port, http_port = int(found.group(1)), int(found.group(2))
        if line.startswith("teacher ready"):
            return grpc_port, http_port, seen
    raise RuntimeError("tgi teacher exited before it was ready:\n" + "".join(seen[-40:]))


def start_tgi_teacher(
    tgi_python: Path,
    tgi_url: str,
    tokenizer_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> TgiTeacher:
    """Start `tropd-teacher serve --backend tgi` in the venv; return once it says ready.

    `env` adds to (or overrides) this process's environment, e.g. TEACHER_TGI_TOKEN.

    Raises:
        RuntimeError: the server exited first (its output is in the message).
    """
    command = [
        str(tgi_python), "-m", "tropd.teacher.cli", "serve", "--backend", "tgi",
        "--tgi-url", tgi_url, "--model", str(tokenizer_dir), "--host", "127.0.0.1",
        "--port", "0", "--http-port", "0", "--drain-grace-s", "2", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        grpc_port, http_port, seen = _read_ports(process)
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise
    return TgiTeacher(process, f"127.0.0.1:{grpc_port}", http_port, seen)


def stop(teacher: TgiTeacher) -> None:
    teacher.process.terminate()
    try:
        teacher.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        teacher.process.kill()
        teacher.process.wait(timeout=30)


@pytest.fixture()
def tgi_teacher_factory(tgi_python: Path) -> Iterator:
    """Start tgi-backed teachers; every one is stopped at the end of the test."""
    started: list[TgiTeacher] = []

    def make(
        tgi_url: str, tokenizer_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> TgiTeacher:
        teacher = start_tgi_teacher(tgi_python, tgi_url, tokenizer_dir, *extra, env=env)
        started.append(teacher)
        return teacher

    yield make
    for teacher in started:
        stop(teacher)
