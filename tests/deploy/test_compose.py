"""docker-compose.yml, checked statically: the compose-spec schema, and what each service hands
to the teacher and trainer is accepted by their own config loaders.

No Docker engine here; tests/deploy/test_compose_rehearsal.py runs the CPU services as processes.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    compose_variables,
    container_port,
    dockerfile_instructions,
    load_compose,
    read_env_file,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _services(compose: dict[str, Any], profile: str | None) -> dict[str, dict[str, Any]]:
    """Services enabled by `docker compose [--profile P] up` with no service names."""
    return {
        name: spec
        for name, spec in compose["services"].items()
        if not spec.get("profiles") or profile in spec["profiles"]
    }


def test_compose_file_passes_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_defines_exactly_the_variables_compose_uses() -> None:
    assert set(read_env_file(ENV_EXAMPLE)) == compose_variables()


def test_default_profile_is_one_teacher_and_two_students(compose: dict[str, Any]) -> None:
    services = _services(compose, None)
    assert set(services) == {"teacher", "student-a", "student-b"}
    teacher = services["teacher"]
    assert teacher["healthcheck"]["test"][:3] == ["CMD", "tropd-teacher", "health"]
    assert _seconds(teacher["healthcheck"]["start_period"]) >= 60
    students = [services["student-a"], services["student-b"]]
    for student in students:
        assert student["depends_on"] == {"teacher": {"condition": "service_healthy"}}
        assert _override(student, "teacher.target") == f"teacher:{_teacher_grpc_port(teacher)}"
    assert len({_override(s, "train.run_dir") for s in students}) == 2
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    tokens = {raw[name]["environment"]["TEACHER_TOKEN"] for name in ("student-a", "student-b")}
    assert tokens == {
        "${STUDENT_A_TOKEN:-student-a-demo-token-change-me}",
        "${STUDENT_B_TOKEN:-student-b-demo-token-change-me}",
    }


def test_job_tokens_are_on_by_default_and_match_the_students(compose: dict[str, Any]) -> None:
    from tropd.teacher.auth import Authenticator
    from tropd.teacher.config import load_config

    teacher = compose["services"]["teacher"]
    config = load_config(environ={k: str(v) for k, v in teacher["environment"].items()})
    assert config.tokens_file == "/etc/tropd/auth/tokens.yaml" and not config.allow_anonymous
    (mount,) = [v for v in teacher["volumes"] if v.endswith(":/etc/tropd/auth:ro")]
    auth = Authenticator(str(ROOT / mount.split(":")[0] / "tokens.yaml"))
    for name in ("student-a", "student-b"):
        token = compose["services"][name]["environment"]["TEACHER_TOKEN"]
        assert auth.authenticate(f"Bearer {token}").name == name


def test_gpu_profile_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    teacher = compose["services"]["teacher-gpu"]
    assert teacher["profiles"] == ["gpu"]
    (device,) = teacher["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert teacher["environment"]["TEACHER_DEVICE"] == "cuda"
    assert teacher["build"]["args"]["ACCELERATOR"] == "cuda"
    assert _seconds(teacher["healthcheck"]["start_period"]) >= 300


def test_tgi_and_observability_profiles(compose: dict[str, Any]) -> None:
    assert compose["services"]["tgi"]["profiles"] == ["tgi"]
    assert "--enable-prefill-logprobs" in compose["services"]["tgi"]["command"]
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["observability"]
    host_config = prometheus["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / host_config).read_text())
    listening = {
        name: {container_port(p) for p in [*spec.get("ports", []), *spec.get("expose", [])]}
        for name, spec in compose["services"].items()
    }
    for job in scrape["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, _, port = target.partition(":")
            assert int(port) in listening[host], f"{job['job_name']}: {target}"


def test_tgi_teacher_takes_token_and_timeout_from_the_environment(
    compose: dict[str, Any],
) -> None:
    from tropd.teacher.config import load_config

    spec = compose["services"]["teacher-tgi"]
    config = load_config(environ={k: str(v) for k, v in spec["environment"].items()})
    assert config.backend == "tgi" and config.tgi_timeout_s == 60
    assert config.tgi_token is None  # TGI_TOKEN empty in .env.example: no header
    env = {**read_env_file(ENV_EXAMPLE), "TGI_TOKEN": "tgi-secret"}
    spec = load_compose(env)["services"]["teacher-tgi"]
    config = load_config(environ={k: str(v) for k, v in spec["environment"].items()})
    assert config.tgi_token is not None and config.tgi_token.get_secret_value() == "tgi-secret"


@pytest.mark.parametrize("name", ["teacher", "teacher-gpu"])
def test_teacher_environment_loads_in_the_server_config(compose: dict[str, Any], name: str) -> None:
    from tropd.teacher.config import load_config

    spec = compose["services"][name]
    env = {k: str(v) for k, v in spec["environment"].items()}
    config = load_config(environ=env)
    assert {container_port(p) for p in spec["ports"]} == {config.port, config.http_port}


@pytest.mark.parametrize("name", ["student-a", "student-b"])
def test_student_commands_load_in_the_trainer_config(compose: dict[str, Any], name: str) -> None:
    config_module = pytest.importorskip("tropd.trainer.config")
    from tropd.trainer.cli import build_parser

    command = compose["services"][name]["command"]
    assert command[:4] == ["tropd-train", "run", "--config", command[3]]
    args = build_parser().parse_args(command[1:])
    assert args.nproc == 1  # STUDENT_NPROC: several processes under torchrun when raised
    cfg = config_module.load_config(ROOT / args.config, args.overrides)
    assert cfg.train.parallel == "none"
    assert cfg.name == name
    # Reachable on the compose network (Prometheus scrapes it), not only on loopback.
    assert cfg.train.status_host == "0.0.0.0"
    assert cfg.train.status_port in {int(p) for p in compose["services"][name]["expose"]}
    scrape = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for t in job["static_configs"][0]["targets"]}
    assert f"{name}:{cfg.train.status_port}" in targets


def test_every_command_is_a_project_entry_point(compose: dict[str, Any]) -> None:
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    for name, spec in compose["services"].items():
        if "build" not in spec:
            continue  # third-party images (tgi, prometheus)
        for command in (spec.get("command"), spec.get("healthcheck", {}).get("test")):
            if command:
                program = command[1] if command[0] == "CMD" else command[0]
                assert program in scripts, f"{name}: {program}"


def test_builds_name_dockerfile_targets_and_tag_their_accelerator(compose: dict[str, Any]) -> None:
    stages = {i.stage for i in dockerfile_instructions(DOCKERFILE)}
    for name, spec in compose["services"].items():
        if "build" in spec:
            assert spec["build"]["target"] in stages, name
            assert spec["image"].endswith("-" + spec["build"]["args"]["ACCELERATOR"]), name


def test_build_args_unset_give_the_dockerfile_defaults() -> None:
    """Each build argument compose passes is an ARG of the Dockerfile, and with its variable unset
    it is the Dockerfile's own default: without a .env, `docker compose build` builds what
    `docker build` does (the proxy and mirror settings stay opt-in)."""
    defaults: dict[str, str | None] = {}
    for instruction in dockerfile_instructions(DOCKERFILE):
        if instruction.keyword == "ARG":
            name, has_default, default = instruction.args.partition("=")
            if has_default or name not in defaults:
                defaults[name] = default.strip('"') if has_default else None
    for name, spec in load_compose(env={})["services"].items():
        for arg, value in spec.get("build", {}).get("args", {}).items():
            assert arg in defaults, f"{name}: build arg {arg} is not an ARG of the Dockerfile"
            if arg != "ACCELERATOR":  # chosen per service, checked above
                expected = defaults[arg]
                assert value == expected, f"{name}: {arg}={value!r}, Dockerfile: {expected!r}"


def _override(service: dict[str, Any], key: str) -> str:
    (value,) = [arg.partition("=")[2] for arg in service["command"] if arg.startswith(key + "=")]
    return value


def _teacher_grpc_port(teacher: dict[str, Any]) -> int:
    return int(teacher["environment"]["TEACHER_PORT"])


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * units[suffix]
    return float(duration)
