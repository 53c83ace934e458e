"""The draft-temperature benchmark runs end to end on its smallest setting (draft accuracy of a
few prompts, no training): the results file is written and well formed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "draft_temperature.py"


def test_draft_accuracy_only_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "draft_temperature.json"
    cmd = [sys.executable, str(BENCHMARK), "--no-train", "--prompts", "4", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    result = json.loads(out.read_text())
    assert result["prompts"] == 4 and "training" not in result
    for world in ("builtin", "long"):
        accuracy = result["draft_accuracy"][world]
        assert set(accuracy) == {"0.0", "0.3", "0.5", "0.7", "1.0"}
        assert accuracy["0.0"] == 1.0  # both teachers are right when greedy
        assert all(0.0 <= a <= 1.0 for a in accuracy.values())
