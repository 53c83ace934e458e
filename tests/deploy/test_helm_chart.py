"""The Helm chart, checked offline through Helm's own Go SDK (helm-python-sdk, libhelm_c bundled).

Every shipped values file (defaults, ci/*-values.yaml, examples/*.yaml) must lint clean and
render; every rendered object must pass kubernetes-validate in strict mode (unknown fields are
errors) for the oldest Kubernetes the chart supports and the newest the validator knows; the
schema must reject unknown keys and wrong types; and the settings the chart hands to the two
services must be accepted by the services' own config loaders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    CHART,
    ROOT,
    VALUES_FILES,
    Rendered,
    find,
    render_file,
    render_values,
    values_id,
)

OLDEST_KUBE = "1.29.0"  # Chart.yaml kubeVersion
KUBE_VERSIONS = (OLDEST_KUBE, kubernetes_validate.utils.latest_version())
# Custom resources have no schema in kubernetes-validate; they get a structural check below.
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}
# Settings the chart derives itself (from teacher.model, teacher.ports and auth), not
# teacher.config.
CHART_SET_TEACHER_FIELDS = {"model", "host", "port", "http_port", "tokens_file"}
# Not offered by the chart: the kubelet's gRPC startup/readiness probes cannot speak TLS (use a
# service mesh for in-cluster TLS).
CHART_UNSUPPORTED_TEACHER_FIELDS = {
    "tls_cert_file", "tls_key_file", "tls_client_ca_file", "http_plaintext",
}  # fmt: skip
# Secrets never go into teacher.config (a ConfigMap): TEACHER_TGI_TOKEN comes from a Secret
# through teacher.extraEnv (examples/tgi-teacher.yaml).
CHART_SECRET_TEACHER_FIELDS = {"tgi_token"}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_chart_lints_clean(values_file: Path | None) -> None:
    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{OLDEST_KUBE}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_rendered_objects_pass_strict_kubernetes_schemas(values_file: Path | None) -> None:
    rendered = render_file(values_file)
    assert rendered, "nothing rendered"
    for item in rendered:
        if item.kind in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(item.obj, version, strict=True)
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
                pytest.fail(f"{item.template} {item.kind}/{item.name} on {version}: {error}")


def test_service_monitor_shape() -> None:
    """No CRD schema offline: check the fields the Prometheus Operator needs, by hand."""
    objs = render_file(CHART / "ci" / "gpu-values.yaml")
    (monitor,) = find(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (http_service,) = [s for s in find(objs, "Service") if s["spec"].get("clusterIP") != "None"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= http_service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in http_service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_pod_monitor_shape() -> None:
    """The students' PodMonitor selects every student pod and scrapes its named status port."""
    objs = render_file(CHART / "ci" / "gpu-values.yaml")
    (monitor,) = find(objs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    jobs = find(objs, "Job")
    assert jobs
    for job in jobs:
        pod = job["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert endpoint["port"] in ports
    assert not find(render_file(None), "PodMonitor")  # off by default


# --- values.schema.json --------------------------------------------------------------------------


def test_schema_is_valid_draft7_and_accepts_every_shipped_values_file() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    with helm.Chart.load(CHART) as chart:
        for values_file in VALUES_FILES:
            values = helm.values_from_yaml(values_file.read_text()) if values_file else None
            chart.validate_schema(chart.merge_values(values))


BAD_VALUES = [
    pytest.param({"replicas": 2}, "additional properties 'replicas'", id="unknown-top-level-key"),
    pytest.param(
        {"teacher": {"config": {"max_batch_token": 1}}},
        "max_batch_token",
        id="unknown-teacher-setting",
    ),
    pytest.param(
        {"teacher": {"gpu": {"count": 1, "type": "h100"}}}, "'type'", id="unknown-nested-key"
    ),
    pytest.param({"students": [{"name": "a", "lr": 1e-4}]}, "'lr'", id="unknown-student-key"),
    pytest.param(
        {"teacher": {"replicaCount": "2"}}, "/teacher/replicaCount", id="string-for-integer"
    ),
    pytest.param({"teacher": {"gpu": {"count": -1}}}, "/teacher/gpu/count", id="negative-gpus"),
    pytest.param(
        {"teacher": {"config": {"dtype": "fp8"}}}, "/teacher/config/dtype", id="dtype-not-in-enum"
    ),
    pytest.param(
        {"teacher": {"ports": {"grpc": 70000}}}, "/teacher/ports/grpc", id="port-out-of-range"
    ),
    pytest.param(
        {"teacher": {"resources": {"limits": {"memory": "lots"}}}},
        "/teacher/resources/limits/memory",
        id="bad-quantity",
    ),
    pytest.param({"students": [{"name": "Job_A"}]}, "/students/0/name", id="name-not-dns-label"),
    pytest.param({"students": [{"name": "a" * 25}]}, "/students/0/name", id="name-too-long"),
    pytest.param({"students": [{"model": "x"}]}, "name", id="student-without-name"),
    pytest.param(
        {"students": [{"name": "a", "overrides": ["no-equals-sign"]}]},
        "/students/0/overrides/0",
        id="override-not-key-value",
    ),
    pytest.param({"students": {"name": "a"}}, "/students", id="students-not-a-list"),
    pytest.param(
        {"teacher": {"config": {"tgi_token": "secret"}}},
        "'tgi_token'",
        id="tgi-token-not-in-the-configmap",
    ),
    pytest.param(
        {"teacher": {"config": {"tgi_timeout_s": 0}}}, "tgi_timeout_s", id="tgi-timeout-zero"
    ),
    pytest.param(
        {"trainer": {"probes": {"liveness": {"periodSeconds": 0}}}},
        "/trainer/probes/liveness",
        id="trainer-probe-period-zero",
    ),
    pytest.param({"auth": {"enabled": "yes"}}, "/auth/enabled", id="string-for-boolean"),
    pytest.param(
        {"auth": {"jobs": [{"name": "a", "token": "short"}]}},
        "/auth/jobs/0/token",
        id="token-too-short",
    ),
    pytest.param(
        {"trainer": {"teacherTarget": "no-port"}},
        "/trainer/teacherTarget",
        id="target-without-port",
    ),
    pytest.param(
        {"teacher": {"config": {"backend": "tgi"}}}, "tgi_url", id="tgi-backend-without-url"
    ),
    pytest.param(
        {"teacher": {"config": {"backend": "tgi", "tgi_url": "tgi:80"}}},
        "/teacher/config/tgi_url",
        id="tgi-url-without-scheme",
    ),
    pytest.param(
        {"grafanaDashboard": {"enabled": "yes"}}, "/grafanaDashboard/enabled", id="dashboard-flag"
    ),
    pytest.param(
        {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
        "/grafanaDashboard/labels/grafana_dashboard",
        id="dashboard-label-not-a-string",
    ),
]


@pytest.mark.parametrize(("values", "expected"), BAD_VALUES)
def test_schema_rejects_bad_values(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render_values(values)
    assert expected in str(caught.value)


BAD_COMBINATIONS = [
    pytest.param({"teacher": {"gpu": {"count": 1}}}, "teacher.config.device", id="gpu-on-cpu"),
    pytest.param(
        {"teacher": {"config": {"device": "cuda"}}}, "teacher.gpu.count is 0", id="cuda-without-gpu"
    ),
    pytest.param(
        {"teacher": {"terminationGracePeriodSeconds": 30}},
        "drain_grace_s",
        id="grace-shorter-than-drain",
    ),
    pytest.param(
        {"students": [{"name": "a"}, {"name": "a"}]}, "appears twice", id="duplicate-student"
    ),
    pytest.param(
        {"auth": {"enabled": True, "jobs": []}}, "auth.existingSecret", id="auth-without-tokens"
    ),
    pytest.param(
        {"teacher": {"enabled": False}}, "trainer.teacherTarget", id="no-teacher-no-target"
    ),
    pytest.param(
        {
            "teacher": {
                "replicaCount": 2,
                "modelCache": {"persistentVolumeClaim": {"enabled": True}},
            }
        },
        "ReadWriteOnce",
        id="rwo-cache-shared-by-replicas",
    ),
]


@pytest.mark.parametrize(("values", "expected"), BAD_COMBINATIONS)
def test_chart_refuses_inconsistent_values(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        render_values(values)
    assert expected in str(caught.value)


# --- what the chart hands to the services -------------------------------------------------


def _schema_teacher_settings() -> set[str]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return set(schema["properties"]["teacher"]["properties"]["config"]["properties"])


def test_teacher_config_keys_are_exactly_the_server_settings() -> None:
    from tropd.teacher.config import ServerConfig

    expected = set(ServerConfig.model_fields) - CHART_SET_TEACHER_FIELDS
    assert _schema_teacher_settings() == (
        expected - CHART_UNSUPPORTED_TEACHER_FIELDS - CHART_SECRET_TEACHER_FIELDS
    )


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_teacher_environment_loads_in_the_server_config(values_file: Path | None) -> None:
    from tropd.teacher.config import load_config

    objs = render_file(values_file)
    maps = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-teacher")]
    if not maps:
        pytest.skip("no teacher in this release")
    config = load_config(environ=maps[0]["data"])
    (deployment,) = find(objs, "Deployment")
    ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert (config.port, config.http_port) == (ports["grpc"], ports["http"])


def test_large_and_fractional_settings_reach_the_server_exactly() -> None:
    from deploy_support import objects

    from tropd.teacher.config import load_config

    settings = {
        "max_message_bytes": 536870912,
        "max_request_tokens": 1048576,
        "max_queue_tokens": 4194304,
        "max_delay_ms": 2.5,
        "model_id": None,
    }
    objs = objects(render_values({"teacher": {"config": settings}}))
    (config_map,) = [
        c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-teacher")
    ]
    config = load_config(environ=config_map["data"])
    assert config.max_message_bytes == 536870912
    assert config.max_request_tokens == 1048576
    assert config.max_delay_ms == 2.5
    assert config.model_id is None


def _recipe_and_overrides(
    job: dict[str, Any], objs: tuple[Rendered, ...]
) -> tuple[str, list[str], str | None]:
    """(recipe path or file name, overrides, inline recipe text from the ConfigMap or None)."""
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["run", "--config"], args
    recipe, overrides = args[2], args[3:]
    if recipe.startswith("/etc/tropd/recipe/"):
        (recipes,) = [
            c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-recipes")
        ]
        return Path(recipe).name, overrides, recipes["data"][Path(recipe).name]
    return recipe, overrides, None


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_student_jobs_load_in_the_trainer_config(values_file: Path | None, tmp_path: Path) -> None:
    """Recipe + overrides of every Job pass the trainer's own loader (unknown keys fail)."""
    config_module = pytest.importorskip("tropd.trainer.config")
    objs = render_file(values_file)
    jobs = find(objs, "Job")
    assert jobs or not yaml.safe_load((values_file or CHART / "values.yaml").read_text()).get(
        "students"
    )
    for job in jobs:
        recipe, overrides, inline = _recipe_and_overrides(job, objs)
        path = ROOT / recipe
        if inline is not None:
            path = tmp_path / recipe
            path.write_text(inline)
        cfg = config_module.load_config(path, overrides)
        student = job["metadata"]["labels"]["tropd.dev/student"]
        assert cfg.name == student
        assert cfg.train.run_dir == f"/runs/{student}"
        assert cfg.teacher.target.endswith(":50051")
        # The status port is reachable from outside the pod (probes, Prometheus).
        assert cfg.train.status_host == "0.0.0.0"
        container = job["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["status"] == cfg.train.status_port


def test_gpu_requests_follow_gpu_count_and_tokens_come_from_the_secret() -> None:
    objs = render_file(CHART / "examples" / "8b-teacher-3-students.yaml")
    (deployment,) = find(objs, "Deployment")
    teacher = deployment["spec"]["template"]["spec"]["containers"][0]
    assert teacher["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert teacher["resources"]["requests"]["nvidia.com/gpu"] == 1
    jobs = find(objs, "Job")
    assert len(jobs) == 3
    for job in jobs:
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        (token,) = [e for e in container["env"] if e["name"] == "TEACHER_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref == {
            "name": "tropd-job-tokens",
            "key": job["metadata"]["labels"]["tropd.dev/student"],
        }


def test_student_probes_use_the_status_port() -> None:
    objs = render_file(CHART / "ci" / "gpu-values.yaml")
    jobs = find(objs, "Job")
    assert jobs
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/livez", "port": "status"}
        startup = container["startupProbe"]
        # Room for loading the student and the trainer's default teacher.wait_ready_s (120 s).
        assert startup["periodSeconds"] * startup["failureThreshold"] > 120
        assert "readinessProbe" not in container  # a Job's pod backs no Service


def test_tgi_settings_reach_the_server_and_the_token_comes_from_a_secret() -> None:
    from deploy_support import objects

    from tropd.teacher.config import load_config

    token_env = {
        "name": "TEACHER_TGI_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "tgi-token", "key": "token"}},
    }
    values = yaml.safe_load((CHART / "examples" / "tgi-teacher.yaml").read_text())
    values["teacher"]["extraEnv"] = [token_env]
    objs = objects(render_values(values))
    (config_map,) = [
        c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-teacher")
    ]
    assert "TEACHER_TGI_TOKEN" not in config_map["data"]
    (deployment,) = find(objs, "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert token_env in env
    config = load_config(environ={**config_map["data"], "TEACHER_TGI_TOKEN": "from-the-secret"})
    assert config.backend == "tgi" and config.tgi_timeout_s == 120
    assert config.tgi_token is not None


def test_teacher_pod_spec_covers_the_operational_requirements() -> None:
    objs = render_file(CHART / "ci" / "gpu-values.yaml")
    (deployment,) = find(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["terminationGracePeriodSeconds"] > 60  # drain_grace_s of gpu-values
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"].endswith("-model-cache")
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]
    services = {s["metadata"]["name"]: s["spec"] for s in find(objs, "Service")}
    assert services["tropd-teacher-grpc"]["clusterIP"] == "None"
    assert services["tropd-teacher"]["type"] == "ClusterIP"


def test_config_checksum_changes_with_the_config() -> None:
    def checksum(values: dict[str, Any]) -> str:
        from deploy_support import objects

        (deployment,) = find(objects(render_values(values)), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"teacher": {"config": {"max_batch_tokens": 4096}}})


def test_helm_test_pod_checks_teacher_health() -> None:
    rendered = render_file(None)
    (pod,) = find(rendered, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    commands = [c["command"] for c in pod["spec"]["containers"]]
    assert [
        "tropd-teacher",
        "health",
        "--target",
        "tropd-teacher-grpc:50051",
        "--timeout",
        "10",
    ] in commands


def test_values_yaml_documents_every_setting() -> None:
    """Each key is documented by a `# --` comment block above it or above one of its sections.

    The students list is exempt: its entries are examples, documented as a whole above it.
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    sections: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        while sections and sections[-1][0] >= indent:
            sections.pop()
        if indent == 0 and stripped.startswith("students:"):
            break  # last top-level key
        block = []
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            block.append(lines[above].strip())
            above -= 1
        documented = any(b.startswith("# --") for b in block) or any(d for _, d in sections)
        key, _, value = stripped.partition(":")
        if value.strip():
            if not documented:
                undocumented.append(f"line {number + 1}: {key}")
        else:
            sections.append((indent, documented))
    assert not undocumented, undocumented


def test_auth_off_serves_everyone_only_because_the_chart_says_so() -> None:
    """The teacher refuses an open address without tokens unless allow_anonymous is explicit."""
    from deploy_support import objects

    from tropd.teacher.config import load_config

    objs = objects(render_values({"auth": {"enabled": False}}))
    (config_map,) = [
        c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-teacher")
    ]
    config = load_config(environ=config_map["data"])
    assert config.host == "0.0.0.0" and config.tokens_file is None and config.allow_anonymous
