"""yamllint (deploy/yamllint.yaml) over the compose file, chart values and plain manifests."""

from __future__ import annotations

import subprocess
import sys

from deploy_support import ROOT


def test_deployment_yaml_is_lint_clean() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            "deploy/yamllint.yaml",
            "docker-compose.yml",
            "deploy/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
