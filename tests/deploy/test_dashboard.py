"""The Grafana dashboard (deploy/grafana/tropd-dashboard.json): valid JSON, and every panel's
queries name only metrics the code exports (the teacher's registry and the trainer's status
collector, as Prometheus exposes them: counters with `_total`, histograms with `_bucket`...)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from tropd.teacher.metrics import TeacherMetrics
from tropd.trainer.status_server import GAUGE_METRICS, StatusServer, TrainerStatus

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
