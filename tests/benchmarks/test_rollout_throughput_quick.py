"""benchmarks/rollout_throughput.py runs end to end on its smallest setting (--quick), and its GPU
check rehearses on CPU (--gpu-check --smoke), so neither rots. Throughput and time are recorded,
never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rollout_throughput.py"


def test_quick_run_measures_both_engines_and_the_timeline(tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], check=True,
                   timeout=900)  # fmt: skip
    result = json.loads(out.read_text())
    assert {c["lengths"] for c in result["throughput"]} == {"spread", "equal"}
    for case in result["throughput"]:
        assert case["generate"]["tokens"] > 0 and case["paged"]["tokens"] > 0
    equal = next(c for c in result["throughput"] if c["lengths"] == "equal")
    assert equal["paged"]["length_min"] == equal["paged"]["length_max"] == equal["budget"]
    assert {(t["setting"], t["overlap"]) for t in result["timeline"]} == {
        (s, o) for s in ("generate, one call", "generate, 32 rows per call", "paged")
        for o in (False, True)
    }  # fmt: skip
    assert all(t["rollout_s"] > 0 and t["update_s"] > 0 for t in result["timeline"])
    assert out.with_suffix(".png").exists()


def test_gpu_check_rehearses_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(SCRIPT), "--gpu-check", "--smoke", "--out", str(out)],
                   check=True, timeout=600)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["generate"]["tokens"] > 0 and result["paged"]["tokens"] > 0
