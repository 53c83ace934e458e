"""Rehearse `docker compose up` without Docker: each default-profile service as a local process.

What is taken from docker-compose.yml and the Dockerfile, unchanged: each service's command (or
its image's CMD), its environment (image ENV, then the service's), its healthcheck command, the
`depends_on: service_healthy` order and the stop signal. What stands in for the container
runtime: the image's WORKDIR (/opt/tropd) is this checkout, each named volume is a temporary
folder, each published container port is a free loopback port (so "teacher:50051" becomes
"127.0.0.1:<port>"), a network alias shared by services is the list of their loopback ports (so
"dns:///teacher-replicas:50051" becomes "ipv4:127.0.0.1:<port>,127.0.0.1:<port>", what the
compose network's DNS answers), and the compose variables are .env.example's with
STUDENT_STEPS=2, as a user's .env would set them. The two students must finish a short run
against the two teacher replicas, both replicas must have scored, and each must drain and exit 0
on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    ENV_EXAMPLE,
    ROOT,
    container_port,
    dockerfile_instructions,
    load_compose,
    read_env_file,
)


def _trainer_missing() -> str | None:
    try:
        found = importlib.util.find_spec("tropd.trainer.loop")
        if found is None:
            return "tropd.trainer.loop does not exist yet"
        __import__("tropd.trainer.loop")
    except ImportError as error:
        return f"tropd.trainer.loop cannot be imported yet: {error}"
    return None


_MISSING = _trainer_missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))]

WORKDIR = "/opt/tropd"  # the Dockerfile's WORKDIR, checked below
IMAGE_DIRS = ("/cache", "/runs")  # made by the Dockerfile; a container's own layer when unmounted
STUDENT_TIMEOUT_S = 400.0  # with the health budget (150 s), inside pytest-timeout's 600 s
HEALTH_POLL_S = 1.0  # compose polls every `interval` (10 s); the rehearsal need not wait that long


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image_env(stage: str) -> dict[str, str]:
    """ENV of the stages `stage` is built on (python, base) and of `stage`, in order."""
    env: dict[str, str] = {}
    for instruction in dockerfile_instructions():
        if instruction.keyword == "ENV" and instruction.stage in {"python", "base", stage}:
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _image_cmd(stage: str) -> list[str]:
    (cmd,) = [i.args for i in dockerfile_instructions() if i.stage == stage and i.keyword == "CMD"]
    return list(json.loads(cmd))


@dataclass
class Stand:
    """The stand-in for the container runtime: paths, ports and host names rewritten."""

    tmp: Path
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, container) -> host
    aliases: dict[str, list[str]] = field(default_factory=dict)  # network alias -> services
    paths: dict[str, dict[str, Path]] = field(default_factory=dict)  # service -> container -> local

    def rewrite(self, service: str, value: str) -> str:
        """One command argument or environment value, as the process outside a container sees it.

        Container paths at the start of a value or after "key=" become local folders; "svc:port"
        of any service becomes its loopback port, "dns:///alias:port" the list of the alias's
        services' loopback ports; the service's own port, alone, after "key=" or as
        "localhost:port", becomes its loopback port; 0.0.0.0 binds loopback only.
        """
        paths = self.paths[service]
        for container_path in sorted(paths, key=len, reverse=True):
            pattern = rf"(^|=){re.escape(container_path)}(?=/|$)"
            local = str(paths[container_path])
            value = re.sub(pattern, lambda m, local=local: m.group(1) + local, value)
        for alias, members in self.aliases.items():

            def addresses(m: re.Match[str], members: list[str] = members) -> str:
                port = int(m.group(1))
                return "ipv4:" + ",".join(f"127.0.0.1:{self.ports[(s, port)]}" for s in members)

            value = re.sub(rf"\bdns:///{re.escape(alias)}:(\d+)\b", addresses, value)
        for (owner, port), host_port in self.ports.items():
            value = re.sub(rf"\b{re.escape(owner)}:{port}\b", f"127.0.0.1:{host_port}", value)
            if owner == service:
                value = re.sub(rf"\blocalhost:{port}\b", f"127.0.0.1:{host_port}", value)
                value = re.sub(rf"(^|=){port}$", rf"\g<1>{host_port}", value)
        return "127.0.0.1" if value == "0.0.0.0" else value

    def environment(self, service: str, spec: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.tmp / "home"),
            # Rehearsal-only: three processes share this machine's two cores.
            "OMP_NUM_THREADS": "1",
        }
        env.update(_image_env(spec["build"]["target"]))
        env.update({k: str(v) for k, v in (spec.get("environment") or {}).items()})
        return {k: self.rewrite(service, v) for k, v in env.items()}

    def command(self, service: str, spec: dict[str, Any]) -> list[str]:
        argv = spec.get("command") or _image_cmd(spec["build"]["target"])
        return [self.rewrite(service, str(a)) for a in argv]


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.process.poll()}) ---\n" + "\n".join(text[-lines:])


def _start(stand: Stand, name: str, spec: dict[str, Any]) -> Running:
    log = stand.tmp / f"{name}.log"
    process = subprocess.Popen(
        stand.command(name, spec),
        cwd=ROOT,
        env=stand.environment(name, spec),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Running(name, process, log)


def _seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", duration).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def _wait_healthy(stand: Stand, service: Running, spec: dict[str, Any]) -> None:
    check = spec["healthcheck"]
    assert check["test"][0] == "CMD"
    argv = [stand.rewrite(service.name, str(a)) for a in check["test"][1:]]
    env = stand.environment(service.name, spec)
    budget = _seconds(check["start_period"]) + check["retries"] * _seconds(check["interval"])
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        assert service.process.poll() is None, "teacher exited before it was healthy\n" + (
            service.tail()
        )
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=30)
        if result.returncode == 0:
            return
        time.sleep(HEALTH_POLL_S)
    pytest.fail(f"teacher not healthy within {budget:.0f}s\n{service.tail()}")


def _scored_tokens(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("teacher_scored_tokens_total")
    )


@pytest.fixture
def processes() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=30)


def test_compose_up_rehearsal(tmp_path: Path, processes: list[Running]) -> None:
    assert any(i.keyword == "WORKDIR" and i.args == WORKDIR for i in dockerfile_instructions())
    env = {**read_env_file(ENV_EXAMPLE), "STUDENT_STEPS": "2"}
    compose = load_compose(env)
    services = {n: s for n, s in compose["services"].items() if not s.get("profiles")}
    teacher_names = sorted({t for s in services.values() for t in s.get("depends_on", {})})
    assert teacher_names == ["teacher", "teacher-2"]
    students = sorted(n for n, s in services.items() if "teacher" in s.get("depends_on", {}))
    assert students == ["student-a", "student-b"]

    stand = Stand(tmp_path)
    for name, spec in services.items():
        for port_spec in [*spec.get("ports", []), *spec.get("expose", [])]:
            stand.ports[(name, container_port(port_spec))] = _free_port()
        paths = {d: tmp_path / "layers" / name / d.strip("/") for d in IMAGE_DIRS}
        for volume in spec.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            paths[target] = (
                ROOT / source if source.startswith(".") else tmp_path / "volumes" / source
            )
        for local in paths.values():
            local.mkdir(parents=True, exist_ok=True)
        stand.paths[name] = {WORKDIR: ROOT, **paths}
        for alias in ((spec.get("networks") or {}).get("default") or {}).get("aliases", []):
            stand.aliases.setdefault(alias, []).append(name)
    (tmp_path / "home").mkdir()

    teachers = [_start(stand, name, services[name]) for name in teacher_names]
    processes.extend(teachers)
    for teacher in teachers:
        _wait_healthy(stand, teacher, services[teacher.name])

    runs = [_start(stand, name, services[name]) for name in students]
    processes.extend(runs)
    deadline = time.monotonic() + STUDENT_TIMEOUT_S
    for run in runs:
        try:
            run.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{run.name} did not finish in {STUDENT_TIMEOUT_S:.0f}s\n{run.tail()}")
    failed = [run.tail() for run in runs if run.process.returncode != 0]
    assert not failed, "\n".join(failed + [teacher.tail() for teacher in teachers])

    for run, name in zip(runs, students, strict=True):
        run_dir = Path(stand.rewrite(name, f"={_arg(services[name], 'train.run_dir')}")[1:])
        # The trainer's last stdout line is its JSON summary; the final step is checkpointed.
        summary = json.loads(run.log.read_text().strip().splitlines()[-1])
        assert summary["steps_done"] == int(env["STUDENT_STEPS"]), run.tail()
        assert Path(summary["run_dir"]) == run_dir
        assert (run_dir / "checkpoints" / f"step-{summary['steps_done']:06d}").is_dir()
    for teacher in teachers:  # the students' round robin reached both replicas
        spec = services[teacher.name]
        http_port = stand.ports[(teacher.name, int(spec["environment"]["TEACHER_HTTP_PORT"]))]
        assert _scored_tokens(http_port) > 0, teacher.name

    for teacher in teachers:
        teacher.process.send_signal(signal.SIGTERM)
    for teacher in teachers:
        grace = _seconds(services[teacher.name]["stop_grace_period"])
        try:
            assert teacher.process.wait(timeout=grace) == 0, teacher.tail()
        except subprocess.TimeoutExpired:
            late = f"{teacher.name} did not drain and exit within {grace:.0f}s"
            pytest.fail(f"{late}\n{teacher.tail()}")


def _arg(spec: dict[str, Any], key: str) -> str:
    (value,) = [a.partition("=")[2] for a in spec["command"] if a.startswith(key + "=")]
    return value
