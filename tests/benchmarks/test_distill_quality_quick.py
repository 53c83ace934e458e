"""The quality benchmark runs end to end (--quick): results.json, results.md and PNGs are written
and well formed. Accuracies are whatever 4 steps give; only the shape of the outputs is checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_quality.py"


@pytest.mark.slow
def test_quick_writes_well_formed_results(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, str(BENCHMARK), "--quick", "--out", str(out), "--runs", str(runs)]
    subprocess.run(cmd, check=True, timeout=900)

    result = json.loads((out / "results.json").read_text(), parse_constant=_reject)
    assert result["meta"]["quick"] is True
    assert result["meta"]["seeds"] == [0]
    baseline = result["meta"]["best_baseline"]
    assert baseline == "mask"  # the only baseline the quick plan runs on the default world
    summary = result["summary"]
    assert set(summary) == {"default", "matched"}
    assert set(summary["default"]) == {"opd", "tropd", "mask", "tropd_surprise", "sft"}
    assert set(summary["matched"]) == {"opd", "tropd", baseline}
    for cells in summary.values():
        for cell in cells.values():
            assert cell["seeds"] == [0]
            assert 0.0 <= cell["final"][0] <= 1.0 and 0.0 <= cell["best"][0] <= 1.0
            assert cell["best"][0] >= cell["final"][0]
            assert cell["collapsed"] in (0, 1) and cell["below_start"] in (0, 1)
            assert cell["drawdown"][0] <= 0 and cell["recovered"] in (0, 1)  # issue 20's dip
            assert 0.0 <= cell["auc"][0] <= 1.0
    assert summary["default"]["tropd"]["trust_fraction"] is not None
    assert summary["default"]["tropd_surprise"]["outlier_weight"] is not None
    assert summary["default"]["sft"]["trust_fraction"] is None
    assert all(r["status"] == "ok" for r in result["runs"])
    assert len(result["runs"]) == 8
    assert {"outlier_mode", "weighting_rules", "lr_sweep", "dip"} <= set(result["cross_tables"])

    md = (out / "results.md").read_text()
    for setting in ("default", "matched"):
        assert f"### Setting `{setting}`" in md
        assert f"--settings {setting} --methods" in md
        assert (out / f"accuracy_{setting}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / f"grad_norm_{setting}.png").read_bytes().startswith(b"\x89PNG")
    assert "| tropd | 1 |" in md
    assert f"--baseline {baseline}" in md
    assert (out / "ablation_default.png").read_bytes().startswith(b"\x89PNG")
    assert (runs / "default" / "opd" / "seed0" / "metrics.jsonl").exists()


def _reject(name: str) -> float:
    raise ValueError(f"results.json holds {name}: not strict JSON")


def test_from_runs_rebuilds_the_report(tmp_path: Path) -> None:
    """An interrupted full run can still be reported from its run folders (no training here)."""
    run_dir = tmp_path / "runs" / "default" / "opd" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train:\n  steps: 2\n")
    rows = [
        {"step": 0, "wall_time": 0.0, "eval/accuracy": 0.5},
        {"step": 1, "wall_time": 1.0, "train/grad_norm": 2.0, "loss/total": 0.1},
        {"step": 2, "wall_time": 2.0, "train/grad_norm": 3.0, "loss/total": 0.2},
        {"step": 2, "wall_time": 2.0, "eval/accuracy": 0.2},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCHMARK), "--from-runs", str(tmp_path / "runs"), "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=300)
    cell = json.loads((out / "results.json").read_text())["summary"]["default"]["opd"]
    assert cell["final"] == [0.2, 0.0] and cell["best"] == [0.5, 0.0]
    assert cell["grad_norm_mean"] == 2.5 and cell["collapsed"] == 1  # 0.2 < half of 0.5
    assert math.isclose(cell["start"][0], 0.5)

    # A later sweep's folders join the saved report: a new cell, and a rerun replacing its run.
    later = tmp_path / "later"
    for setting, final in (("default", 0.4), ("matched", 0.6)):
        again = later / setting / "opd" / "seed0"
        again.mkdir(parents=True)
        (again / "config.yaml").write_text("train:\n  steps: 2\n")
        (again / "metrics.jsonl").write_text("".join(
            json.dumps({**r, "eval/accuracy": final} if r["step"] == 2 and "eval/accuracy" in r
                       else r) + "\n" for r in rows))  # fmt: skip
    merged = tmp_path / "merged"
    cmd = [sys.executable, str(BENCHMARK), "--from-json", str(out / "results.json"),
           "--from-runs", str(later), "--out", str(merged)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300)
    summary = json.loads((merged / "results.json").read_text())["summary"]
    assert summary["default"]["opd"]["final"][0] == 0.4
    assert summary["matched"]["opd"]["final"][0] == 0.6


def test_long_settings_use_the_long_world() -> None:
    """`--settings long long-strong` distill the long world's students from its own teacher."""
    sys.path.insert(0, str(BENCHMARK.parent))
    import distill_quality as dq

    from tropd.trainer.config import load_config
    from tropd.trainer.world import load_manifest

    args = dq.parse_args(["--settings", "long", "long-strong", "--methods", "opd", "--seeds", "0"])
    first, second = dq.plan(args)
    assert first == [] and second == [("long", "opd"), ("long-strong", "opd")]
    teacher = dq.teacher_model("long")
    assert teacher == dq.teacher_model("long-strong") == str(dq.LONG_WORLD / "teacher")
    assert dq.teacher_model("default") == "builtin:teacher"
    ctx = {"runs": Path("runs"), "targets": {teacher: "127.0.0.1:1"}, "deadline": None}
    jobs = dq._jobs(second, args, ctx)
    for job, student in zip(jobs, ("student", "student-strong"), strict=True):
        assert f"student.path={dq.LONG_WORLD / student}" in job["overrides"]
        assert "teacher.target=127.0.0.1:1" in job["overrides"]
        cfg = load_config(job["config"], job["overrides"])
        assert cfg.task.options == {"digits": 12}
        assert cfg.student.path == str(dq.LONG_WORLD / student)
    manifest = load_manifest(dq.LONG_WORLD)
    assert manifest.task.config.digits == 12 and manifest.task.max_new_tokens == 122
    assert sorted(manifest.models) == ["student", "student-strong", "teacher"]


def test_trl_peer_plans_the_same_worlds() -> None:
    """The TRL row (its own environment; not run here) trains each setting's student from its
    world's teacher, exactly as the tropd rows do."""
    sys.path.insert(0, str(BENCHMARK.parent))
    import distill_quality as dq
    import trl_peer

    args = trl_peer.parse_args(["--settings", "default", "long", "--seeds", "1"])
    default, long = trl_peer.plan_jobs(args, None)
    assert default["teacher"] == "builtin:teacher" and default["overrides"] == []
    assert long["teacher"] == str(dq.LONG_WORLD / "teacher")
    assert long["overrides"] == [f"student.path={dq.LONG_WORLD / 'student'}"]
    assert long["config"].endswith("long.yaml")
    assert long["run_dir"].endswith("long/trl_dense_rkl/seed1")
