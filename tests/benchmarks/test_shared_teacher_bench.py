"""The shared-teacher benchmark runs end to end (--quick): a real teacher, three real trainer
processes and a latency probe. Timings are recorded, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "shared_teacher.py"


@pytest.mark.slow
def test_shared_teacher_quick_writes_results(tmp_path) -> None:
    out = tmp_path / "shared.json"
    subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--out", str(out)], check=True, timeout=900
    )
    result = json.loads(out.read_text())
    assert result["quick"] is True
    solo, shared = result["phases"]["solo"], result["phases"]["shared"]
    assert solo["probe_latency"]["n"] > 0 and shared["probe_latency"]["n"] > 0
    assert shared["served_tokens"]["greedy"] > 0 and solo["served_tokens"]["greedy"] == 0
    assert shared["trainers"]["light-a"]["steps"] == shared["trainers"]["light-b"]["steps"] == 4
    assert result["light_p99_ratio_shared_over_solo"] > 0
