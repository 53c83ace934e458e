"""The README's main job: one teacher service, two student jobs sharing it (OPD vs TrOPD).

    tropd-train demo [--steps N] [--out runs/demo]

Starts `tropd-teacher serve` on loopback with the built-in teacher, trains the built-in student
twice from the same start with the same budget (configs/demo.yaml; only loss.method differs),
prints a before/after table, and ends with one JSON line for scripts. CPU only, no Docker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tropd.trainer.config import load_config
from tropd.trainer.keep_best import read_best
from tropd.trainer.local_teacher import start_local_teacher

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
METHODS = {"opd": ["loss.method=opd"], "tropd": ["loss.method=tropd"]}


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=str(DEMO_CONFIG),
        help="recipe both jobs share (default: configs/demo.yaml)",
    )
    p.add_argument("--steps", type=int, help="training steps per job (default: the recipe's)")
    p.add_argument("--out", default="runs/demo", help="output folder for both runs and the plots")
    p.add_argument("--teacher-model", default="builtin:teacher", help="teacher model folder")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="extra overrides for both jobs"
    )


def _teacher_accuracy(target: str, cfg_path: str, overrides: list[str]) -> float:
    from tropd.teacher.client import TeacherClient
    from tropd.trainer.evaluate import evaluate_teacher
    from tropd.trainer.setup import load_data, load_tokenizer
    from tropd.trainer.teacher_link import wait_for_teacher

    cfg = load_config(cfg_path, overrides)
    data = load_data(cfg, *load_tokenizer(cfg))
    with TeacherClient(target) as client:
        wait_for_teacher(client, 120)
        return evaluate_teacher(client, data.codec, data.task, data.eval,
                                data.max_new_tokens).accuracy  # fmt: skip


def _train_jobs(args: argparse.Namespace, target: str, out: Path) -> dict[str, dict]:
    """Both student jobs at once, as two processes sharing the one teacher."""
    procs = {}
    for name, extra in METHODS.items():
        overrides = [
            *args.overrides,
            *extra,
            f"name={name}",
            f"teacher.target={target}",
            f"train.run_dir={out / name}",
            "train.resume=false",
            "train.progress=false",
        ]
        if args.steps:
            overrides.append(f"train.steps={args.steps}")
        cmd = [
            sys.executable,
            "-m",
            "tropd.trainer.cli",
            "run",
            "--config",
            args.config,
            *overrides,
        ]
        log_file = (out / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True)
    results = {}
    for name, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} job failed (exit {proc.returncode}); see {out / (name + '.log')}"
            )
        results[name] = json.loads(stdout.strip().splitlines()[-1])
        results[name]["grad_norms"] = _grad_norms(out / name)
    return results


def _grad_norms(run_dir: Path) -> list[float]:
    from tropd.trainer.run_log import read_metrics

    return [
        r["train/grad_norm"]
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "train/grad_norm" in r
    ]


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"mean {sum(values) / len(values):.2f}, p99 {p99:.2f}, max {ordered[-1]:.2f}"


def run_demo(args: argparse.Namespace) -> int:
    from tropd.trainer.plots import plot_comparison
    from tropd.trainer.setup import resolve_model_path

    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_model = resolve_model_path(args.teacher_model)
    teacher = start_local_teacher(teacher_model, out / "teacher.log")
    target = teacher.target
    try:
        print(f"teacher service on {target} ({teacher_model}); logs in {out}", flush=True)
        teacher_acc = _teacher_accuracy(target, args.config, args.overrides)
        print(
            f"teacher accuracy {teacher_acc:.3f}; training OPD and TrOPD side by side ...",
            flush=True,
        )
        results = _train_jobs(args, target, out)
    finally:
        teacher.stop()
    opd, tropd = results["opd"], results["tropd"]
    plot = plot_comparison({"OPD": out / "opd", "TrOPD": out / "tropd"}, out / "opd_vs_tropd.png")
    rows = [
        ("student before", f"{tropd['accuracy_before']:.3f}", "-"),
        ("after OPD", f"{opd['accuracy_after']:.3f}", _summary(opd["grad_norms"])),
        ("after TrOPD", f"{tropd['accuracy_after']:.3f}", _summary(tropd["grad_norms"])),
        ("teacher", f"{teacher_acc:.3f}", "-"),
    ]
    print(f"\n{'':16} {'accuracy':>9}   grad norm (pre-clip)")
    for label, acc, gn in rows:
        print(f"{label:16} {acc:>9}   {gn}")
    best = read_best(out / "tropd")
    if best is not None:  # train.keep_best: what a user takes away, never below the start
        print(f"\nbest TrOPD student kept: step {best.step}, accuracy {best.accuracy:.3f}, in "
              f"{out / 'tropd' / 'best'} (tropd-train export-best)")  # fmt: skip
    print(f"\nplots: {plot} and {out}/*/plots/; metrics: {out}/*/metrics.jsonl\n")
    print(
        json.dumps(
            {
                "student_accuracy_before": tropd["accuracy_before"],
                "student_accuracy_after": tropd["accuracy_after"],
                "opd_accuracy_after": opd["accuracy_after"],
                "student_best_accuracy": None if best is None else best.accuracy,
                "teacher_accuracy": teacher_acc,
                "steps": tropd["steps_done"],
                "wall_s": round(time.monotonic() - t0, 1),
                "run_dir": str(out),
            }
        )
    )
    return 0
