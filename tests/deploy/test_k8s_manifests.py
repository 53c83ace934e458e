"""deploy/k8s/ (plain manifests for users without Helm) equals a fresh render of the chart."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import ROOT, render_module


def test_plain_manifests_match_a_fresh_render() -> None:
    stale = render_module().stale_files()
    assert not stale, (
        f"deploy/k8s/ is out of date with the chart: {stale}; "
        "run .venv/bin/python scripts/render_k8s.py"
    )


@pytest.mark.parametrize("scenario", render_module().SCENARIOS, ids=lambda s: s.folder)
def test_plain_manifests_are_strictly_valid_and_listed(scenario) -> None:
    folder = ROOT / "deploy" / "k8s" / scenario.folder
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["resources"] == manifests
    kinds = set()
    for name in manifests:
        for obj in yaml.safe_load_all((folder / name).read_text()):
            kinds.add(obj["kind"])
            if obj["kind"] == "Job":
                _assert_status_port_is_reachable(obj)
            assert "helm.sh/hook" not in (obj["metadata"].get("annotations") or {})
            try:
                kubernetes_validate.validate(
                    obj, kubernetes_validate.utils.latest_version(), strict=True
                )
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
                pytest.fail(f"{scenario.folder}/{name}: {error}")
    assert {"Deployment", "Service", "ConfigMap", "Job", "PersistentVolumeClaim"} <= kinds


def _assert_status_port_is_reachable(job: dict) -> None:
    """A student binds its status server on every pod address and declares the port."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "train.status_host=0.0.0.0" in args, args
    (port_arg,) = [a for a in args if a.startswith("train.status_port=")]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["status"] == int(port_arg.split("=", 1)[1])
    assert container["livenessProbe"]["httpGet"]["port"] == "status"
