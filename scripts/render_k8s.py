"""Render the Helm chart into the plain manifests of deploy/k8s/, for users without Helm.

    .venv/bin/python scripts/render_k8s.py            # rewrite deploy/k8s/
    .venv/bin/python scripts/render_k8s.py --check    # exit 1 when deploy/k8s/ is stale

Renders through Helm's own Go SDK (helm-python-sdk: libhelm_c bundled in the wheel, offline, no
helm binary, no cluster). Each scenario becomes one folder with a kustomization.yaml, so
`kubectl apply -k deploy/k8s/<scenario>` installs it. Test hooks (`helm test` pods) and NOTES.txt
are left out: they only make sense inside a Helm release. tests/deploy/ fails when the committed
folders differ from a fresh render.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "tropd"
K8S = ROOT / "deploy" / "k8s"
RELEASE = "tropd"
NAMESPACE = "tropd"
HEADER = (
    "# Generated from deploy/helm/tropd ({values}); do not edit.\n"
    "# Regenerate: .venv/bin/python scripts/render_k8s.py\n"
)


@dataclass(frozen=True)
class Scenario:
    """One folder of deploy/k8s/: the chart rendered with one values file (None = defaults)."""

    folder: str
    values_file: Path | None


SCENARIOS = (
    Scenario("cpu-demo", None),
    Scenario("gpu-8b-3-students", CHART / "examples" / "8b-teacher-3-students.yaml"),
)

_DOC_SPLIT = re.compile(r"^---[ \t]*$", re.MULTILINE)


def render_chart(values_file: Path | None, name: str = RELEASE, namespace: str = NAMESPACE) -> dict:
    """Render the chart offline as `helm install --dry-run` would.

    Args:
        values_file: a values YAML (parsed by Helm's own parser), or None for the defaults.
        name: release name; namespace: release namespace.
    Returns:
        Template path (e.g. "tropd/templates/teacher-deployment.yaml") -> rendered text.
    Raises:
        helm_python.HelmValuesError: the values break values.schema.json.
        helm_python.HelmRenderError: a template failed (including the chart's own `fail` checks).
    """
    import helm_python as helm  # loads the bundled Go library; only needed when rendering

    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def documents(text: str) -> list[str]:
    """The YAML documents of one rendered template that hold an object (comments kept)."""
    docs = []
    for chunk in _DOC_SPLIT.split(text):
        if yaml.safe_load(chunk) is not None:
            docs.append(chunk.strip("\n") + "\n")
    return docs


def _is_hook(doc: str) -> bool:
    meta = yaml.safe_load(doc).get("metadata") or {}
    return "helm.sh/hook" in (meta.get("annotations") or {})


def plain_manifests(scenario: Scenario) -> dict[str, str]:
    """File name -> content of one deploy/k8s/<scenario>/ folder, kustomization.yaml included."""
    label = scenario.values_file.relative_to(CHART) if scenario.values_file else "default values"
    files: dict[str, str] = {}
    for template, text in sorted(render_chart(scenario.values_file).items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        docs = [d for d in documents(text) if not _is_hook(d)]
        if docs:
            body = "---\n".join(docs)
            files[Path(template).name] = HEADER.format(values=label) + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER.format(values=label) + yaml.safe_dump(
        kustomization, sort_keys=False
    )
    return files


def stale_files() -> list[str]:
    """Paths under deploy/k8s/ that are missing, different or extra against a fresh render."""
    stale = []
    for scenario in SCENARIOS:
        folder = K8S / scenario.folder
        expected = plain_manifests(scenario)
        present = {p.name for p in folder.glob("*")} if folder.is_dir() else set()
        for name in sorted(present | set(expected)):
            path = folder / name
            if name not in expected or not path.is_file() or path.read_text() != expected[name]:
                stale.append(str(path.relative_to(ROOT)))
    return stale


def write_all() -> None:
    for scenario in SCENARIOS:
        folder = K8S / scenario.folder
        folder.mkdir(parents=True, exist_ok=True)
        expected = plain_manifests(scenario)
        for old in folder.glob("*"):
            if old.name not in expected:
                old.unlink()
        for name, text in expected.items():
            (folder / name).write_text(text)
        print(f"wrote {folder.relative_to(ROOT)}/ ({len(expected)} files)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        return 1 if stale else 0
    write_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
