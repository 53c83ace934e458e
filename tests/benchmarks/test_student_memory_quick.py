"""benchmarks/student_memory.py runs end to end on its smallest setting (--quick), and its GPU
check rehearses on CPU (--gpu-check --smoke), so neither rots. Memory and time are recorded,
never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "student_memory.py"


def test_quick_grid_measures_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "student_memory.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], check=True,
                   timeout=600)  # fmt: skip
    result = json.loads(out.read_text())
    measured = {(c["kind"], c["path"]) for c in result["cases"] if "extra_mib" in c}
    assert measured == {(k, p) for k in ("update", "rollout") for p in ("old", "new")}
    assert out.with_suffix(".png").exists()


def test_gpu_check_rehearses_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(SCRIPT), "--gpu-check", "--smoke", "--out", str(out)],
                   check=True, timeout=600)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["update"]["applied"] and result["update"]["model_flops"] > 0
    assert result["rollout"]["generated_tokens"] > 0


def test_anchor_cost_measures_the_update_with_and_without_the_frozen_start(tmp_path: Path) -> None:
    out = tmp_path / "anchor.json"
    subprocess.run([sys.executable, str(SCRIPT), "--anchor", "--quick", "--out", str(out)],
                   check=True, timeout=600)  # fmt: skip
    (row,) = json.loads(out.read_text())["rows"]
    assert row["off"]["anchor_weights_mib"] == 0 < row["on"]["anchor_weights_mib"]
    assert row["off"]["applied"] and row["on"]["applied"]
    assert set(row["on_over_off"]) == {"extra_mib", "cpu_seconds"}
