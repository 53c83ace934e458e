"""benchmarks/gpu_check.py runs end to end on CPU (--smoke), so the GPU script does not rot
between the rare runs on a CUDA machine. Sizes are tiny; only the checks that hold on any
device are asserted (float32 against the reference, service == in-process, resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], check=True,
                   timeout=600)  # fmt: skip
    result = json.loads(out.read_text())

    assert result["environment"]["smoke"] is True
    for model in ("world_teacher_gpt2", "random_llama_32k"):
        float32 = result["precision"][model]["float32"]
        assert float32["within_tolerance"], float32
        assert float32["top1_agreement"] == 1.0
        assert result["precision"][model]["bfloat16"]["positions"] == float32["positions"] > 0
    service = result["service_bf16"]
    assert service["service_vs_inprocess_max_abs"] == 0.0
    throughput = result["throughput_smoke"]
    assert set(throughput["scored_tokens_per_s"]) == {"inprocess_batched", "service_1", "service_8"}
    assert all(rate > 0 for rate in throughput["scored_tokens_per_s"].values())
    trainer = result["trainer"]
    assert trainer["finite_losses"]
    assert trainer["resume_loss_max_abs"] == 0.0 and trainer["resume_weight_max_abs"] == 0.0
    assert result["throughput_llama-8b"].startswith("skipped")
