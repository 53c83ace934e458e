"""The one `tropd` namespace: every package folder is installed, and no old top-level name is."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    # A folder under services/tropd/ that another mapping provides is that mapping's package.
    assert found == listed, f"unlisted: {sorted(found - listed)}, stale: {sorted(listed - found)}"


@pytest.mark.parametrize("module", ["teacher", "student_trainer"])
def test_old_top_level_names_are_gone(module: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0 and "No module named" in result.stderr


def test_namespace_imports(tmp_path: Path) -> None:
    code = "import tropd.teacher.server, tropd.trainer.loop, tropd.wire.v1.teacher_pb2"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
