"""docker-compose.yml, checked statically: the compose-spec schema, and what each service hands
to the teacher and trainer is accepted by their own config loaders.

No Docker engine here; tests/deploy/test_compose_rehearsal.py runs the CPU services as processes.
"""

from __future__ import annotations

import json
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


def test_default_profile_is_two_teacher_replicas_and_two_students(compose: dict[str, Any]) -> None:
    services = _services(compose, None)
    assert set(services) == {"teacher", "teacher-2", "student-a", "student-b"}
    teacher, replica = services["teacher"], services["teacher-2"]
    assert teacher["healthcheck"]["test"][:3] == ["CMD", "tropd-teacher", "health"]
    assert _seconds(teacher["healthcheck"]["start_period"]) >= 60
    # Replicas of one teacher: the same image, settings, mounts and health check (the YAML
    # anchor x-teacher-cpu); they differ only in their host name and published ports.
    same = ("image", "build", "environment", "volumes", "healthcheck", "networks")
    assert {k: teacher[k] for k in same} == {k: replica[k] for k in same}
    assert (teacher["hostname"], replica["hostname"]) == ("teacher", "teacher-2")
    (alias,) = teacher["networks"]["default"]["aliases"]
    students = [services["student-a"], services["student-b"]]
    healthy = {"condition": "service_healthy"}
    for student in students:
        assert student["depends_on"] == {"teacher": healthy, "teacher-2": healthy}
        # A dns:/// target: gRPC balances over every address of the alias (round robin), and
        # the trainer sizes its Score requests in flight and checks the replicas by it.
        target = f"dns:///{alias}:{_teacher_grpc_port(teacher)}"
        assert _override(student, "teacher.target") == target
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


def test_prometheus_scrapes_every_teacher_replica(compose: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    (teachers,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "tropd-teacher"]
    targets = set(teachers["static_configs"][0]["targets"])
    replicas = [
        name
        for name, spec in compose["services"].items()
        if "teacher-replicas" in (spec.get("networks") or {}).get("default", {}).get("aliases", [])
    ]
    assert len(replicas) == 2
    for name in replicas:
        port = int(compose["services"][name]["environment"]["TEACHER_HTTP_PORT"])
        assert f"{name}:{port}" in targets


def test_grafana_is_provisioned_with_prometheus_and_the_tropd_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["observability"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if v[0] == "."}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasources,) = [
        yaml.safe_load(f.read_text()) for f in (provisioning / "datasources").glob("*.yaml")
    ]
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    prometheus = compose["services"]["prometheus"]
    assert source["url"] == f"http://prometheus:{container_port(prometheus['ports'][0])}"
    (dashboards,) = [
        yaml.safe_load(f.read_text()) for f in (provisioning / "dashboards").glob("*.yaml")
    ]
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    # The provider reads the folder compose mounts deploy/grafana/ on: the one dashboard file,
    # the same the Helm chart ships (no copy).
    folder = mounts[provider["options"]["path"]]
    assert folder == ROOT / "deploy" / "grafana"
    (dashboard,) = [json.loads(f.read_text()) for f in folder.glob("*.json")]
    # Its panels' data source is the variable `datasource` of type prometheus: the default one.
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {f"${{{variable['name']}}}"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.rpartition("/")[0] == provider["options"]["path"]
    assert (folder / home.rpartition("/")[2]).is_file()


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


@pytest.mark.parametrize("name", ["teacher", "teacher-2", "teacher-gpu"])
def test_teacher_environment_loads_in_the_server_config(compose: dict[str, Any], name: str) -> None:
    from tropd.teacher.config import load_config

    spec = compose["services"][name]
    env = {k: str(v) for k, v in spec["environment"].items()}
    config = load_config(environ=env)
    ports = [*spec.get("ports", []), *spec.get("expose", [])]
    assert {container_port(p) for p in ports} == {config.port, config.http_port}


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
