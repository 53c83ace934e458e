"""The throughput benchmark runs end to end (--quick); timings are printed, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "teacher_throughput.py"


def test_benchmark_quick_writes_results(tmp_path) -> None:
    out = tmp_path / "throughput.json"
    subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--out", str(out)], check=True, timeout=600
    )
    result = json.loads(out.read_text())
    assert result["quick"] is True
    for name in ("long", "short"):
        scenario = result["scenarios"][name]
        assert set(scenario["scored_tokens_per_s"]) == {
            "inprocess_batched", "inprocess_one_by_one", "naive_one_at_a_time", "service_1",
            "service_8",
        }  # fmt: skip
        assert all(v > 0 for v in scenario["scored_tokens_per_s"].values())
        assert scenario["wire"]["response_bytes_per_scored_token"] > 0
