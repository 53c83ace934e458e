"""`docker compose up` for real: scripts/compose_smoke.sh builds the CPU images from the Dockerfile,
runs the compose file's two teacher replicas and two students with a real container engine,
checks them (both replicas served Score calls of both students) and takes the stack down (see the
script's header for what it checks and what it keeps).

The script sets its engine up itself: Docker when its daemon answers, else rootful podman, which
it installs. When that is impossible it exits 3 with the reason, and this test fails with that
reason: it never skips, so CI cannot pass without having run the stack. To leave it out of a local
run on purpose: `bash scripts/test.sh -m "not container"`.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from deploy_support import ROOT

SCRIPT = ROOT / "scripts" / "compose_smoke.sh"
# Another smoke on this machine first (the script's lock), then a fresh machine's set-up and
# builds (~5 min on 2 cores) and the run; the script bounds each phase itself, well inside this.
TIMEOUT_S = 2700
STOP_GRACE_S = 240  # after SIGTERM the script still takes its stack down
ENGINE_NOT_SET_UP = 3  # the script's exit status when no container engine can be set up

pytestmark = [pytest.mark.container, pytest.mark.timeout(TIMEOUT_S + STOP_GRACE_S + 60)]


def _run_smoke() -> tuple[int, str]:
    # Its own session, so that a timeout reaches the script and whatever it runs (compose, builds).
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's trap takes the stack down
        try:
            output, _ = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"compose smoke still running after {TIMEOUT_S}s:\n{_tail(output)}")
    return proc.returncode, output


def _tail(output: str, lines: int = 80) -> str:
    return "\n".join(output.splitlines()[-lines:])


def test_compose_stack_builds_runs_and_leaves_nothing_behind() -> None:
    status, output = _run_smoke()
    if status == ENGINE_NOT_SET_UP:
        reasons = [line for line in output.splitlines() if "CONTAINER ENGINE NOT SET UP" in line]
        reason = reasons[-1] if reasons else "(no reason printed)"
        pytest.fail(f"no container engine could be set up here: {reason}\n{_tail(output)}")
    assert status == 0, f"compose smoke failed (exit status {status}):\n{_tail(output)}"
    (summary,) = [line for line in output.splitlines() if line.startswith("[smoke] passed:")]
    print(summary)  # timings and image sizes, shown with -s or -rP
