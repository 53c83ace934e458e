"""Distillation quality: every method, several seeds, one teacher service, on the built-in world.

    .venv/bin/python benchmarks/distill_quality.py --sensitivity   # full run (~75 min, 2 cores)
    .venv/bin/python benchmarks/distill_quality.py --quick         # smoke run (~1 min; a test)
    .venv/bin/python benchmarks/distill_quality.py --settings matched --methods opd tropd \
        --baseline mask                                            # one table's cells

Starts one `teacher.cli serve` on loopback, then trains from the same student start with the
same budget (the recipe's steps x prompts x samples) for every planned (setting, method, seed)
in 2 worker processes (one torch thread each; each imports torch once and runs its jobs one
after another through `student_trainer.loop.train`). Settings are recipes in configs/bench/
(issue 4: default world, matched-format control, harder mismatch, learning-rate sweep); methods
are override sets (below). The default world gets every method; the other settings get OPD, the
TrOPD variants (issue 8's outlier weightings included), continued SFT and the best baseline of
the default world (`--baseline`, else picked from this run's default-world results).

Jobs run in priority order; with `--deadline-min` a job not started by then is skipped and
listed as cut in the results. Writes results.json, results.md and PNGs (see
`distill_quality_report`) under --out (default benchmarks/results/distill_quality/; quick runs
add `_quick`), and the per-run folders under --runs.

The `long` setting (issue 8's long-answer world: 12-digit addition, ~2.9x longer answers) is
opt-in (`--settings long`): its teacher and student live in worlds/long/ (see
`student_trainer.world.build.long_spec`), and it gets its own teacher service.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report module beside this one

from distill_quality_report import write_report  # noqa: E402

from tropd.trainer.local_teacher import LocalTeacher  # noqa: E402

BENCH_CONFIGS = REPO_ROOT / "configs" / "bench"
DEFAULT_SETTING = "default"
SETTINGS = ("default", "lr3e-4", "matched", "hard", "lr3e-5")
OPT_IN_SETTINGS = ("long", "long-strong")  # run only when named in --settings
LONG_WORLD = REPO_ROOT / "worlds" / "long"
# Settings whose world is not the built-in one: (teacher folder, student folder).
WORLDS = {
    "long": (LONG_WORLD / "teacher", LONG_WORLD / "student"),
    "long-strong": (LONG_WORLD / "teacher", LONG_WORLD / "student-strong"),
}
BUILTIN_TEACHER = "builtin:teacher"
SEEDS = (0, 1, 2)
SERIES = (
    "eval/accuracy",
    "train/grad_norm",
    "train/trust_fraction",
    "loss/total",
    "train/outlier_weight",
    "train/sequence_weight",
)

_TROPD = ["loss.method=tropd", "loss.outlier=topk_fkl", "loss.outlier_weighting=none"]
# Today's default (issue 8), spelled out, as issue 20's candidates modify it.
_ISSUE20_DEFAULT = [*_TROPD[:2], "loss.outlier_weighting=surprise"]
_RKL_TOPK = ["loss.method=rkl_topk", "loss.student_topk=16"]
# Every variant spells out its loss fields, so results do not move when trainer defaults change.
METHODS: dict[str, list[str]] = {
    "opd": ["loss.method=opd"],
    "tropd": _TROPD,
    "tropd_reward": ["loss.method=tropd", "loss.outlier=topk_fkl_reward"],
    "tropd_mask": ["loss.method=tropd", "loss.outlier=mask"],
    "tropd_clip": ["loss.method=tropd", "loss.outlier=clip"],
    # Measured with T=1 drafts, the default until issue 14 made greedy drafts the default.
    "tropd_guidance": [*_TROPD, "guidance.fraction=0.5", "guidance.temperature=1.0"],
    "tropd_surprise": [*_TROPD[:2], "loss.outlier_weighting=surprise"],
    "tropd_support": [*_TROPD[:2], "loss.outlier_weighting=support"],
    "tropd_prefix_gate": [*_TROPD[:2], "loss.outlier_weighting=prefix_gate"],
    "clip": ["loss.method=clip"],
    "mask": ["loss.method=mask"],
    "fkl_topk": ["loss.method=fkl_topk"],
    "jsd": ["loss.method=jsd"],
    "eopd": ["loss.method=eopd"],
    "entropy_top20": ["loss.method=entropy_top20"],
    "sft": ["loss.method=sft", "guidance.temperature=1.0"],
    # issue 8's c/s0 sensitivity around the defaults (c=2, s0=4), default world only.
    "surprise_c1": [*_TROPD[:2], "loss.outlier_weighting=surprise", "loss.surprise_c=1"],
    "surprise_c4": [*_TROPD[:2], "loss.outlier_weighting=surprise", "loss.surprise_c=4"],
    "surprise_s0_2": [*_TROPD[:2], "loss.outlier_weighting=surprise", "loss.surprise_s0=2"],
    "surprise_s0_8": [*_TROPD[:2], "loss.outlier_weighting=surprise", "loss.surprise_s0=8"],
    # issue 20's candidates (the student's own top-16 scored by the teacher as candidates).
    "rkl_topk": _RKL_TOPK,
    "tropd_rkl": [*_ISSUE20_DEFAULT, "loss.trust_signal=rkl_topk", "loss.student_topk=16"],
    "rkl_topk_floor": [*_RKL_TOPK, "loss.rkl_floor=-5"],
    "tropd_seqtrust": [*_ISSUE20_DEFAULT, "loss.sequence_trust=true"],
    # issue 20's second round (pre-registered in docs/results.md before any run).
    "tropd_warmup": [*_ISSUE20_DEFAULT, "optim.warmup_steps=10"],
    "tropd_anchor": [*_ISSUE20_DEFAULT, "loss.anchor_kl=1.0", "loss.anchor_decay_steps=50"],
    "tropd_guided": [*_ISSUE20_DEFAULT, "guidance.fraction=0.5", "loss.beta_guidance=1.0"],
    # and its third round.
    "tropd_anchor20": [*_ISSUE20_DEFAULT, "loss.anchor_kl=1.0", "loss.anchor_decay_steps=20"],
    "tropd_warmup_anchor20": [
        *_ISSUE20_DEFAULT,
        "loss.anchor_kl=1.0",
        "loss.anchor_decay_steps=20",
        "optim.warmup_steps=10",
    ],
    # and its fourth.
    "tropd_rkl_plain": [*_TROPD, "loss.trust_signal=rkl_topk", "loss.student_topk=16"],
    "rkl_topk_seqtrust": [*_RKL_TOPK, "loss.sequence_trust=true"],
    # and its fifth.
    "tropd_anchor_const": [*_ISSUE20_DEFAULT, "loss.anchor_kl=1.0"],
}
BASELINES = ("clip", "mask", "fkl_topk", "jsd", "eopd", "entropy_top20")
SENSITIVITY = ("surprise_c1", "surprise_c4", "surprise_s0_2", "surprise_s0_8")
ISSUE20 = ("rkl_topk", "tropd_rkl", "rkl_topk_floor", "tropd_seqtrust", "tropd_warmup",
           "tropd_anchor", "tropd_guided", "tropd_anchor20", "tropd_warmup_anchor20",
           "tropd_rkl_plain", "rkl_topk_seqtrust", "tropd_anchor_const")  # fmt: skip
DEFAULT_WORLD_METHODS = tuple(m for m in METHODS if m not in (*SENSITIVITY, *ISSUE20))
# Other settings, in priority order (a deadline cuts from the end); "best" = the best baseline.
OTHER_METHODS = (
    "opd",
    "tropd",
    "tropd_surprise",
    "best",
    "tropd_support",
    "tropd_reward",
    "tropd_prefix_gate",
    "sft",
)
QUICK = {
    "settings": ("default", "matched"),
    "default_methods": ("opd", "tropd", "mask", "tropd_surprise", "sft"),
    "other_methods": ("opd", "tropd", "best"),
    "seeds": (0,),
    "overrides": ["train.steps=4", "train.eval_every=2", "task.eval_size=32"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 4 steps, few methods (~2 min)")
    p.add_argument(
        "--settings",
        nargs="+",
        choices=[*SETTINGS, *OPT_IN_SETTINGS],
        help="default: all five (not the long ones)",
    )
    p.add_argument("--methods", nargs="+", choices=[*METHODS, "best"], help="default: the plan")
    p.add_argument("--seeds", nargs="+", type=int, help=f"default: {list(SEEDS)}")
    p.add_argument("--baseline", choices=BASELINES, help="best baseline for the other settings")
    p.add_argument("--sensitivity", action="store_true", help="add the surprise c/s0 sweep")
    p.add_argument("--workers", type=int, default=2, help="training processes at once")
    p.add_argument("--deadline-min", type=float, help="skip jobs not started after this long")
    p.add_argument("--out", type=Path, help="results folder")
    p.add_argument("--runs", type=Path, help="per-run folders (default runs/bench/...)")
    p.add_argument("--from-json", type=Path, help="only redraw the report from a results.json")
    p.add_argument(
        "--from-runs",
        type=Path,
        help="only redraw the report from run folders (with --from-json: its runs and these)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra trainer overrides")
    args = p.parse_args(argv)
    if args.from_json and not args.from_json.is_file():
        p.error(f"--from-json {args.from_json}: no such file")
    if args.from_runs and not any(args.from_runs.glob("*/*/seed*")):
        p.error(f"--from-runs {args.from_runs}: no run folders (<setting>/<method>/seed<k>/) in it")
    return args


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(setting, method) cells: those of the default world first, then the others by priority.

    Returns:
        (first phase, second phase); "best" in the second stands for the best baseline.
    """
    settings = args.settings or (QUICK["settings"] if args.quick else SETTINGS)
    default_methods = QUICK["default_methods"] if args.quick else DEFAULT_WORLD_METHODS
    other_methods = QUICK["other_methods"] if args.quick else OTHER_METHODS
    if args.methods:
        default_methods = other_methods = tuple(args.methods)
    first = [(DEFAULT_SETTING, m) for m in default_methods if DEFAULT_SETTING in settings]
    second = [(s, m) for m in other_methods for s in settings if s != DEFAULT_SETTING]
    if args.sensitivity and DEFAULT_SETTING in settings:  # lowest priority: last
        second += [(DEFAULT_SETTING, m) for m in SENSITIVITY]
    return [c for c in first if c[1] != "best"], second


def teacher_model(setting: str) -> str:
    """The teacher a setting distills from: its own world's, else the built-in one."""
    if setting in WORLDS:
        folder = WORLDS[setting][0]
        if not folder.is_dir():
            raise SystemExit(
                f"{folder} is missing; build it with `.venv/bin/python -m student_trainer.world "
                f"--recipe long --out {folder.parent}`"
            )
        return str(folder)
    return BUILTIN_TEACHER


def start_teacher(log_path: Path, model: str = BUILTIN_TEACHER) -> LocalTeacher:
    """A teacher service the jobs of its world share (the demo's pattern), ready to answer."""
    from tropd.teacher.client import TeacherClient
    from tropd.trainer.local_teacher import start_local_teacher
    from tropd.trainer.setup import resolve_model_path
    from tropd.trainer.teacher_link import wait_for_teacher

    teacher = start_local_teacher(resolve_model_path(model), log_path)
    try:
        with TeacherClient(teacher.target) as client:
            wait_for_teacher(client, 120)
    except BaseException:
        teacher.stop()
        raise
    return teacher


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker; returns the series the report needs (never raises)."""
    from tropd.trainer.config import load_config
    from tropd.trainer.loop import train

    base = {k: job[k] for k in ("setting", "method", "seed")}
    if job["deadline"] is not None and time.time() > job["deadline"]:
        return {**base, "status": "cut"}
    t0 = time.monotonic()
    try:
        cfg = load_config(job["config"], job["overrides"])
        train(cfg)
        status, error = "ok", None
    except Exception as exc:  # a failed run is a result (e.g. non-finite), not a crash
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    series = read_series(Path(job["run_dir"]))
    wall = time.monotonic() - t0
    print(
        f"  {base['setting']:>8} {base['method']:<18} seed {base['seed']}: {status} "
        f"{_accs(series)} ({wall:.0f}s)",
        flush=True,
    )
    return {**base, "status": status, "error": error, "wall_s": wall, "series": series}


def read_series(run_dir: Path) -> dict[str, list[list[float]]]:
    """The [[step, value], ...] series the report uses, from a run's metrics.jsonl."""
    from tropd.trainer.run_log import read_metrics

    series: dict[str, list[list[float]]] = {k: [] for k in SERIES}
    path = run_dir / "metrics.jsonl"
    for row in read_metrics(path) if path.exists() else []:
        for key, values in series.items():
            if key in row and row[key] is not None:
                values.append([row["step"], float(row[key])])
    return series


def records_from_runs(runs: Path) -> list[dict[str, Any]]:
    """Rebuild the records from `<runs>/<setting>/<method>/seed<k>/` (after an interrupted run).

    A run whose log stops short of its config's steps counts as failed.
    """
    import yaml

    records = []
    for run_dir in sorted(runs.glob("*/*/seed*")):
        setting, method, seed = run_dir.parts[-3], run_dir.parts[-2], int(run_dir.name[4:])
        series = read_series(run_dir)
        steps = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"]
        done = bool(series["eval/accuracy"]) and series["eval/accuracy"][-1][0] >= steps
        records.append(
            {
                "setting": setting,
                "method": method,
                "seed": seed,
                "status": "ok" if done else "failed",
                "error": None if done else "log ends before the last step",
                "wall_s": None,
                "series": series,
            }
        )
    return records


def merge_records(saved: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A saved report's runs (`--from-json`) and run folders (`--from-runs`) in one list; a run
    in both (same setting, method and seed) is taken from its folder."""
    return list({(r["setting"], r["method"], r["seed"]): r for r in [*saved, *fresh]}.values())


def _accs(series: dict[str, list[list[float]]]) -> str:
    acc = series["eval/accuracy"]
    return f"acc {acc[0][1]:.3f} -> {acc[-1][1]:.3f}" if acc else "no eval"


def _jobs(cells: list[tuple[str, str]], args: argparse.Namespace, ctx: dict) -> list[dict]:
    seeds = args.seeds or (QUICK["seeds"] if args.quick else SEEDS)
    extra = [*(QUICK["overrides"] if args.quick else []), *args.overrides]
    jobs = []
    for setting, method in cells:
        for seed in seeds:
            run_dir = ctx["runs"] / setting / method / f"seed{seed}"
            overrides = [*METHODS[method], *extra, f"train.seed={seed}"]
            if setting in WORLDS:
                overrides += [f"student.path={WORLDS[setting][1]}"]
            target = ctx["targets"][teacher_model(setting)]
            overrides += [f"teacher.target={target}", f"train.run_dir={run_dir}"]
            overrides += [f"name={setting}-{method}-s{seed}"]
            jobs.append(
                {
                    "setting": setting,
                    "method": method,
                    "seed": seed,
                    "config": str(BENCH_CONFIGS / f"{setting}.yaml"),
                    "overrides": overrides,
                    "run_dir": str(run_dir),
                    "deadline": ctx["deadline"],
                }
            )
    return jobs


def best_baseline(records: list[dict[str, Any]]) -> str | None:
    """The baseline with the highest mean final accuracy on the default world (None: none ran)."""
    finals: dict[str, list[float]] = {}
    for r in records:
        acc = r.get("series", {}).get("eval/accuracy")
        if r["setting"] == DEFAULT_SETTING and r["method"] in BASELINES and acc:
            finals.setdefault(r["method"], []).append(acc[-1][1])
    if not finals:
        return None
    return max(finals, key=lambda m: sum(finals[m]) / len(finals[m]))


def _command() -> str:
    return " ".join([".venv/bin/python benchmarks/distill_quality.py", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suffix = "_quick" if args.quick else ""
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"distill_quality{suffix}"
    runs = args.runs or REPO_ROOT / "runs" / "bench" / f"distill_quality{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    if args.from_json or args.from_runs:  # redraw the report only
        saved = json.loads(args.from_json.read_text()) if args.from_json else {"runs": []}
        fresh = records_from_runs(args.from_runs) if args.from_runs else []
        meta = saved.get("meta") if not fresh else {
            "quick": args.quick,
            "wall_s": float("nan"),
            "workers": args.workers,
            "best_baseline": args.baseline,
            "seeds": list(args.seeds or SEEDS),
            "overrides": args.overrides,
            "command": _command(),
            "load_average": None,
        }  # fmt: skip
        write_report(merge_records(saved["runs"], fresh), meta, out)
        return 0
    t0 = time.time()
    deadline = t0 + 60 * args.deadline_min if args.deadline_min else None
    first, second = plan(args)
    models = sorted({teacher_model(s) for s, _ in [*first, *second]})
    teachers: dict[str, LocalTeacher] = {}
    try:
        for model in models:
            log_name = (
                "teacher.log"
                if model == BUILTIN_TEACHER
                else f"teacher-{Path(model).parent.name}.log"
            )
            teachers[model] = start_teacher(runs / log_name, model)
            print(
                f"teacher service {model} on {teachers[model].target}; runs in {runs}", flush=True
            )
    except BaseException:
        for teacher in teachers.values():
            teacher.stop(timeout_s=30)
        raise
    targets = {model: teacher.target for model, teacher in teachers.items()}
    ctx = {"runs": runs, "targets": targets, "deadline": deadline}
    records: list[dict[str, Any]] = []
    baseline = args.baseline
    try:
        with mp.get_context("spawn").Pool(args.workers, initializer=_worker_init) as pool:
            records += pool.map(run_job, _jobs(first, args, ctx), chunksize=1)
            baseline = args.baseline or best_baseline(records)
            if baseline is None and any(m == "best" for _, m in second):
                raise SystemExit("no default-world baseline results: pass --baseline NAME")
            second = [(s, baseline if m == "best" else m) for s, m in second]
            second = [c for c in second if c not in first]
            records += pool.map(run_job, _jobs(second, args, ctx), chunksize=1)
    finally:
        for teacher in teachers.values():
            teacher.stop(timeout_s=30)
    meta = {
        "quick": args.quick,
        "wall_s": time.time() - t0,
        "workers": args.workers,
        "best_baseline": baseline,
        "seeds": sorted({r["seed"] for r in records}),
        "overrides": [*(QUICK["overrides"] if args.quick else []), *args.overrides],
        "command": _command(),
        "load_average": os.getloadavg(),
    }
    paths = write_report(records, meta, out)
    print(
        json.dumps(
            {"wall_s": round(meta["wall_s"], 1), "out": str(out), "files": [p.name for p in paths]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
