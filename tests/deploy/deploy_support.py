"""Helpers of the deployment tests: chart rendering, compose interpolation, Dockerfile parsing.

Knows nothing about pytest. Rendering goes through scripts/render_k8s.py (Helm's Go SDK), so the
tests check exactly what the plain manifests are made from.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tropd"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

# Every values file the chart ships: None is the chart's defaults (values.yaml).
VALUES_FILES: tuple[Path | None, ...] = (
    None,
    *sorted((CHART / "ci").glob("*-values.yaml")),
    *sorted((CHART / "examples").glob("*.yaml")),
)


def values_id(values_file: Path | None) -> str:
    return "defaults" if values_file is None else str(values_file.relative_to(CHART))


@cache
def render_module() -> ModuleType:
    """scripts/render_k8s.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Rendered:
    """One object of a rendered chart, with the template it came from."""

    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


def render_values(values: Mapping[str, Any] | None) -> dict[str, str]:
    """Render the chart with in-memory values (as `--set`/`-f` would merge them)."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        return chart.render(
            dict(values) if values is not None else None,
            name="tropd",
            namespace="tropd",
            is_install=True,
        )


def objects(rendered: Mapping[str, str]) -> list[Rendered]:
    """Every Kubernetes object in a render result (NOTES.txt and empty documents dropped)."""
    found = []
    for template, text in sorted(rendered.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                found.append(Rendered(template, doc))
    return found


@cache
def render_file(values_file: Path | None) -> tuple[Rendered, ...]:
    return tuple(objects(render_module().render_chart(values_file)))


def find(objs: tuple[Rendered, ...] | list[Rendered], kind: str) -> list[dict[str, Any]]:
    return [o.obj for o in objs if o.kind == kind]


# --- docker compose --------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-spec interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?") and not current:
            raise KeyError(f"required variable {name}: {arg}")
        return current or ""

    if isinstance(value, str):
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose_variables() -> set[str]:
    """Names of the variables docker-compose.yml interpolates."""
    return {
        m.group("name") or m.group("bare")
        for m in _VAR.finditer(COMPOSE_FILE.read_text())
        if m.group(0) != "$$"
    }


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml after interpolation with `env` (default: .env.example's values)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, read_env_file(ENV_EXAMPLE) if env is None else env)


def container_port(spec: str | int | dict[str, Any]) -> int:
    """The container side of a compose `ports` entry ("127.0.0.1:8080:80/tcp" -> 80)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split(":")[-1].split("/")[0])


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined, each tagged with its build stage name."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stage, found = "", []
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        found.append(Instruction(stage, keyword, args.strip()))
    return found
