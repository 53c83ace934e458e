"""The Grafana dashboard (deploy/grafana/tropd-dashboard.json): valid JSON, every panel's queries
name only metrics the code exports (the teacher's registry and the trainer's status collector, as
Prometheus exposes them: counters with `_total`, histograms with `_bucket`...), every per-job
teacher series has a per-replica panel, and the Helm chart ships this very file as a ConfigMap
(compose mounts it; tests/deploy/test_compose.py checks that side)."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import helm_python as helm
from deploy_support import CHART, objects, render_values
from prometheus_client import CollectorRegistry

from tropd.teacher.metrics import TeacherMetrics
from tropd.trainer.run_status import TrainerStatus
from tropd.trainer.status_server import GAUGE_METRICS, StatusServer

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tropd-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}
METRIC = re.compile(r"\b((?:teacher|trainer)_[a-z0-9_]+)")


def exposed(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def exported_names() -> set[str]:
    status = TrainerStatus("run", "/tmp/run", total_steps=10)
    status.update_step(1, {key: 1.0 for key in GAUGE_METRICS} | {"loss/total": 1.0})
    status.update_eval(1, 0.5)
    return exposed(TeacherMetrics().registry) | exposed(StatusServer(status).registry)


def test_every_panel_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_names()
    assert "teacher_requests_total" in known and "trainer_step" in known  # the sets are real
    panels = dashboard["panels"]
    assert len(panels) >= 10
    for panel in panels:
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            names = METRIC.findall(expr)
            assert names, f"{panel['title']}: {expr} names no tropd metric"
            unknown = set(names) - known
            assert not unknown, f"{panel['title']}: {sorted(unknown)} are not exported"
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))


def test_every_per_job_teacher_metric_has_a_per_replica_panel() -> None:
    """Each replica enforces job weights and quotas alone, so each `teacher_job_*` family is
    charted per job and per replica (`replica` joined from teacher_info on `instance`)."""
    dashboard = json.loads(DASHBOARD.read_text())
    per_job = {
        family.name
        for family in TeacherMetrics().registry.collect()
        if family.name.startswith("teacher_job_")
    }
    charted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            if "by (" in expr and "replica" in expr.split("by (", 1)[1].split(")")[0]:
                assert "group_left (replica) teacher_info" in expr, expr
                charted |= {n for n in per_job if n in expr}
    assert charted == per_job, sorted(per_job - charted)


def test_teacher_info_names_the_replica_by_its_host_name() -> None:
    import socket

    text = TeacherMetrics().render().decode()
    assert f'teacher_info{{replica="{socket.gethostname()}"}} 1.0' in text
    assert 'teacher_info{replica="pod-7"} 1.0' in TeacherMetrics(replica="pod-7").render().decode()


def _dashboard_configmaps(values: dict[str, object]) -> list[dict[str, object]]:
    rendered = objects(render_values(values))
    return [o.obj for o in rendered if o.kind == "ConfigMap" and "dashboard" in o.name]


def test_chart_ships_the_dashboard_file_itself_as_a_sidecar_configmap() -> None:
    assert _dashboard_configmaps({}) == []  # off by default
    (configmap,) = _dashboard_configmaps(
        {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "tropd"}}}
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "tropd"}
    (text,) = configmap["data"].values()
    assert text == DASHBOARD.read_text().rstrip("\n")
    # One file, no copy: the chart's is a link to deploy/grafana/ (Helm follows it).
    link = CHART / "dashboards" / DASHBOARD.name
    assert link.is_symlink() and link.resolve() == DASHBOARD
    # Another sidecar label: values maps merge, so the default label is dropped with null.
    labels = {"team/dashboards": "tropd", "grafana_dashboard": None}
    (relabelled,) = _dashboard_configmaps({"grafanaDashboard": {"enabled": True, "labels": labels}})
    labels = relabelled["metadata"]["labels"]
    assert labels["team/dashboards"] == "tropd" and "grafana_dashboard" not in labels


def test_packaged_chart_holds_the_dashboard_contents(tmp_path: Path) -> None:
    """`helm package` stores the linked file's contents: an installed chart has the JSON."""
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"tropd/dashboards/{DASHBOARD.name}")
        assert member.isfile()
        packaged = tar.extractfile(member)
        assert packaged is not None and packaged.read() == DASHBOARD.read_bytes()
