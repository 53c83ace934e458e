"""Type-check the `tropd` namespace with mypy (settings in pyproject.toml).

    python scripts/typecheck.py [extra mypy args]

mypy resolves modules from folders, and cannot follow setuptools' package-dir mapping
(services/teacher/ is `tropd.teacher`, services/student_trainer/ is `tropd.trainer`), so this
lays the namespace out as a tree of symbolic links (under .mypy_cache/, rebuilt each run, so
mypy's cache stays valid) and points mypy at it. Paths in mypy's report are shown relative to the
repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, Path]:
    """The package-dir mapping of pyproject.toml, as absolute folders."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def link_tree(dest: Path) -> None:
    """dest/tropd/... mirrors the installed namespace: a folder per mapped package, links inside."""
    for name, folder in sorted(package_dirs().items()):
        target = dest.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in folder.iterdir():
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)


def main() -> int:
    tree = ROOT / ".mypy_cache" / "tropd-tree"
    shutil.rmtree(tree, ignore_errors=True)
    link_tree(tree)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache"), *sys.argv[1:]],
        cwd=tree, capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(tree)},
    )  # fmt: skip
    report = result.stdout + result.stderr
    # Back to paths a person can open; the longest package first (tropd.teacher before tropd).
    for name, folder in sorted(package_dirs().items(), key=lambda kv: -len(kv[0])):
        report = report.replace("/".join(name.split(".")) + "/", f"{folder.relative_to(ROOT)}/")
    print(report, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
