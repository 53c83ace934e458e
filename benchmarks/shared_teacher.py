"""One teacher, three real student jobs, one of them greedy: does fair sharing protect the light?

    .venv/bin/python benchmarks/shared_teacher.py            # full run, minutes on 2 CPU cores
    .venv/bin/python benchmarks/shared_teacher.py --quick    # smoke run (tests use it)

A teacher (`tropd-teacher serve`, built-in teacher, a tokens file with four jobs of weight 1)
serves real trainer processes (`tropd-train run --config configs/demo.yaml`, built-in world):
* phase "solo":   light-a trains alone;
* phase "shared": light-a, light-b and greedy train at once; greedy rolls out
  `--greedy-factor` times more prompts per step, so its Score calls are that much bigger.
In both phases a latency probe (job "probe", a fourth light job) sends a light-trainer-shaped
Score request (32 sequences, top-k 16) every 0.5 s and times each call on the client, from the
moment every trainer of the phase has made its first Score call until the first light trainer
finishes: a trainer makes one Score call per step, too few for a p99, so the probe is how this
benchmark measures the light job's scoring latency. The light trainer's per-step teacher time
(`perf/teacher_s` in its metrics.jsonl) is reported beside it. Throughput shares are each
job's served tokens (GET /v1/jobs) during the shared phase; the teacher is work-conserving, so
a job that asks for less than its weighted share gets what it asks and greedy the rest.
Target: the probe's p99 in "shared" <= 2x its p99 in "solo". The trainers run at nice 10:
on a cluster they run on other machines than the teacher, and here their CPU work would
otherwise slow the teacher's forward passes, which is not what fair queueing is about; other
load on the machine still counts (its load average is recorded). `--max-batch-tokens` (1024)
bounds how long a light request waits for the forward pass in flight.
JSON goes to benchmarks/results/shared_teacher.json (quick: ..._quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tropd.teacher.client import TeacherClient
from tropd.trainer.local_teacher import LocalTeacher, start_local_teacher
from tropd.trainer.setup import resolve_model_path
from tropd.trainer.teacher_link import wait_for_teacher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JOBS = ("light-a", "light-b", "greedy", "probe")
PROBE_SEQUENCES, PROBE_LENGTH, PROBE_START, PROBE_TOP_K = 32, 24, 12, 16


def _tokens_file(folder: Path) -> dict[str, str]:
    tokens = {job: f"{job}-bench-token-{os.urandom(8).hex()}" for job in JOBS}
    jobs = [{"name": job, "token": token, "weight": 1} for job, token in tokens.items()]
    (folder / "tokens.yaml").write_text(json.dumps({"jobs": jobs}))
    return tokens


def _start_teacher(folder: Path, max_batch_tokens: int) -> LocalTeacher:
    extra = [
        "--tokens-file",
        str(folder / "tokens.yaml"),
        "--max-batch-tokens",
        str(max_batch_tokens),
    ]
    return start_local_teacher(resolve_model_path("builtin:teacher"), folder / "teacher.log", extra)


def _start_trainer(
    name: str, target: str, token: str, out: Path, args: argparse.Namespace
) -> subprocess.Popen:
    prompts = 8 * (args.greedy_factor if name == "greedy" else 1)
    # greedy trains "forever" and is stopped when the light jobs finish.
    steps = 100_000 if name == "greedy" else args.steps
    cmd = [
        sys.executable, "-m", "tropd.trainer.cli", "run", "--config", "configs/demo.yaml",
        f"name={name}", f"teacher.target={target}", f"teacher.token={token}",
        f"train.steps={steps}", "train.threads=1", f"train.run_dir={out / name}",
        "train.resume=false", "train.progress=false", "train.tensorboard=false",
        "train.status_port=null", "train.eval_every=100000", "train.checkpoint_every=100000",
        "task.eval_size=8", f"rollout.prompts_per_step={prompts}",
    ]  # fmt: skip
    log = (out / f"{name}.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_lower_priority
    )


def _lower_priority() -> None:
    os.nice(10)


def _served(http_url: str, token: str) -> dict[str, int]:
    request = urllib.request.Request(
        http_url + "/v1/jobs", headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return {j["name"]: j["served_tokens"] for j in json.loads(reply.read())["jobs"]}


class Probe:
    """A light job's Score calls at a steady pace, timed on the client, in a thread."""

    def __init__(self, target: str, token: str, period_s: float = 0.5) -> None:
        self.client = TeacherClient(target, token=token, timeout=120)
        self.vocab = wait_for_teacher(self.client, 300).vocab_size
        self.period_s = period_s
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            batch = [
                rng.integers(3, self.vocab, PROBE_LENGTH, dtype=np.int32)
                for _ in range(PROBE_SEQUENCES)
            ]
            started = time.perf_counter()
            self.client.score(batch, PROBE_START, top_k=PROBE_TOP_K)
            self.latencies_s.append(time.perf_counter() - started)
            self._stop.wait(self.period_s)

    def start(self) -> None:
        self.latencies_s = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> list[float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.latencies_s


def _wait_served(
    ctx: dict[str, Any],
    start: dict[str, int],
    names: list[str],
    procs: dict[str, subprocess.Popen],
    out: Path,
) -> dict[str, int]:
    """Wait until every trainer in `names` is past its start-up (it has been served)."""
    while True:
        now = _served(ctx["http"], ctx["tokens"]["probe"])
        if all(now.get(name, 0) > start.get(name, 0) for name in names):
            return now
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"trainer {name} exited early; see {out / (name + '.log')}")
        time.sleep(0.2)


def _percentiles_ms(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
    }


def _trainer_stats(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/teacher_s" in r]
    return {
        "steps": len(steps),
        "teacher_s_per_step": _percentiles_ms([r["perf/teacher_s"] for r in steps]),
        "step_s_mean": round(float(np.mean([r["perf/step_s"] for r in steps])), 3),
    }


def _phase(
    names: tuple[str, ...], ctx: dict[str, Any], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Run trainers `names` until every light one has finished; probe from when all were served
    until the first light one finishes."""
    tokens, probe = ctx["tokens"], ctx["probe"]
    start = _served(ctx["http"], tokens["probe"])
    lights = [name for name in names if name != "greedy"]
    procs: dict[str, subprocess.Popen] = {}
    # greedy first: the light jobs start once it is scoring, so they train beside it throughout.
    for group in (["greedy"] if "greedy" in names else [], lights):
        procs.update({n: _start_trainer(n, ctx["target"], tokens[n], out, args) for n in group})
        now = _wait_served(ctx, start, group, procs, out)
    before = now
    probe.start()
    while all(procs[name].poll() is None for name in lights):
        time.sleep(0.2)
    latencies = probe.stop()
    after = _served(ctx["http"], tokens["probe"])
    for name in lights:
        if procs[name].wait() != 0:
            raise RuntimeError(f"trainer {name} failed; see {out / (name + '.log')}")
    if "greedy" in procs:
        procs["greedy"].terminate()
        procs["greedy"].wait(timeout=60)
    served = {job: after.get(job, 0) - before.get(job, 0) for job in JOBS}
    total = max(1, sum(served.values()))
    return {
        "jobs": list(names),
        "probe_latency": _percentiles_ms(latencies),
        "served_tokens": served,
        "served_share": {job: round(v / total, 3) for job, v in served.items()},
        "trainers": {name: _trainer_stats(out / name) for name in lights},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 light steps")
    parser.add_argument("--steps", type=int, default=150, help="light trainers' steps [150]")
    parser.add_argument("--greedy-factor", type=int, default=16, help="greedy's prompts x [16]")
    parser.add_argument("--max-batch-tokens", type=int, default=1024, help="teacher budget")
    parser.add_argument("--out", type=Path, help="JSON path [benchmarks/results/...]")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.greedy_factor = 4, 4
    out_json = args.out or RESULTS / f"shared_teacher{'_quick' if args.quick else ''}.json"
    with tempfile.TemporaryDirectory(prefix="shared_teacher_") as tmp:
        folder = Path(tmp)
        tokens = _tokens_file(folder)
        teacher = _start_teacher(folder, args.max_batch_tokens)
        target, http = teacher.target, teacher.http_url
        try:
            probe = Probe(target, tokens["probe"])  # waits until the teacher serves
            ctx = {"tokens": tokens, "probe": probe, "target": target, "http": http}
            phases = {}
            for phase, names in (
                ("solo", ("light-a",)),
                ("shared", ("light-a", "light-b", "greedy")),
            ):
                run_dir = folder / phase
                run_dir.mkdir()
                phases[phase] = _phase(names, ctx, args, run_dir)
                print(f"{phase}: {json.dumps(phases[phase])}", flush=True)
            probe.client.close()
        finally:
            teacher.stop()
    solo = phases["solo"]["probe_latency"]["p99_ms"]
    shared = phases["shared"]["probe_latency"]["p99_ms"]
    result = {
        "quick": args.quick,
        "config": {
            "light_steps": args.steps,
            "greedy_factor": args.greedy_factor,
            "max_batch_tokens": args.max_batch_tokens,
            "probe": {"sequences": PROBE_SEQUENCES, "length": PROBE_LENGTH, "top_k": PROBE_TOP_K},
        },  # fmt: skip
        "phases": phases,
        "light_p99_ratio_shared_over_solo": round(shared / solo, 2),
        "target_met": shared <= 2 * solo,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("light_p99_ratio_shared_over_solo", "target_met")}))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
