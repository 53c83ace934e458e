"""Rollout throughput: the `generate` and `paged` engines side by side, and the demo recipe's step
timeline (rollout, teacher wait, update) with and without overlap.

    .venv/bin/python benchmarks/rollout_throughput.py             # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/rollout_throughput.py --quick     # smoke run (tests use it)
    .venv/bin/python benchmarks/rollout_throughput.py --quality   # 3 seeds of the demo recipe
    python benchmarks/rollout_throughput.py --gpu-check           # on a CUDA host: ~1.7B shape

* throughput: generated tokens per second of each engine (`rollout_engines.make_engine`, the
  trainer's own code path, behaviour log-probs included), engines alternating in one run, on a
  tiny (~0.35M) and a ~10M-parameter random Llama. Near-uniform random weights (init 0.02) make
  lengths controllable: "spread" stops at any of V/128 eos ids (geometric lengths, capped at
  the budget), "equal" has no reachable eos (every row runs the whole budget).
* timeline: the demo recipe (configs/demo.yaml) for a few steps over a local teacher process,
  `perf/rollout_s`, `perf/teacher_wait_s`, `perf/update_s` per step, overlap off and on, for
  `generate` with every row in one call (nothing can overlap: the rollout ends in one group),
  `generate` 32 rows per call, and `paged`.
* --quality: the demo recipe's accuracy after training, `paged` vs `generate`, 3 seeds each.
* --gpu-check: a random Qwen3-1.7B-shaped student (bf16), 256 rows x up to 1,024 new tokens,
  tokens/s and peak CUDA memory per engine (--smoke: tiny shapes on CPU).

Writes benchmarks/results/rollout_throughput.json (+ .png); other modes write their own JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
ENGINES = ("generate", "paged")
MODELS = {  # name: (hidden, layers, heads, vocab)
    "tiny": (64, 2, 4, 2048),
    "10m": (320, 8, 8, 2048),
}


def _model(hidden: int, layers: int, heads: int, vocab: int, positions: int = 1024) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 27 // 10,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        max_position_embeddings=positions, initializer_range=0.02, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


def _sample(
    engine: str, model: Any, contexts: list[list[int]], budget: int, eos: list[int], seed: int,
    batch_size: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One rollout through the trainer's engine; tokens, seconds, lengths."""
    from tropd.trainer.config import RolloutConfig
    from tropd.trainer.rollout_engines import make_engine

    engine_obj = make_engine(RolloutConfig(engine=engine))  # type: ignore[arg-type]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    rows = [c for group in engine_obj.sample(model, contexts, 1, budget, eos, 1,
                                             batch_size=batch_size) for c in group]  # fmt: skip
    seconds = time.perf_counter() - t0
    lengths = [c.ids.size for c in rows]
    return {
        "engine": engine, "seconds": seconds, "tokens": int(sum(lengths)),
        "tokens_per_s": sum(lengths) / seconds, "length_min": int(min(lengths)),
        "length_median": float(np.median(lengths)), "length_max": int(max(lengths)),
    }  # fmt: skip


def throughput(quick: bool) -> list[dict[str, Any]]:
    rows, budget = (8, 32) if quick else (32, 512)
    models = {"tiny": MODELS["tiny"]} if quick else MODELS
    cases = []
    for name, (hidden, layers, heads, vocab) in models.items():
        model = _model(hidden, layers, heads, vocab)
        params = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(1)
        contexts = [torch.randint(4, vocab, (int(torch.randint(8, 64, (1,), generator=g)),),
                                  generator=g).tolist() for _ in range(rows)]  # fmt: skip
        spread_eos = list(range(4, 4 + vocab // 128))  # ~1/128 per step: mean ~128 tokens
        for lengths, eos in (("spread", spread_eos), ("equal", [vocab])):  # id `vocab`: never
            measured = {e: _sample(e, model, contexts, budget, eos, seed=0) for e in ENGINES}
            case = {"model": name, "parameters": params, "lengths": lengths, "rows": rows,
                    "budget": budget, **{e: measured[e] for e in ENGINES},
                    "paged_over_generate": measured["paged"]["tokens_per_s"]
                    / measured["generate"]["tokens_per_s"]}  # fmt: skip
            print(f"{name:5s} {lengths:6s} generate {measured['generate']['tokens_per_s']:8.0f} "
                  f"tok/s  paged {measured['paged']['tokens_per_s']:8.0f} tok/s  ratio "
                  f"{case['paged_over_generate']:.2f}x", flush=True)  # fmt: skip
            cases.append(case)
    return cases


TIMELINE_SETTINGS = {
    "generate, one call": ["rollout.engine=generate"],
    "generate, 32 rows per call": ["rollout.engine=generate", "rollout.batch_size=32"],
    "paged": ["rollout.engine=paged"],
}


def timeline(quick: bool, out_dir: Path) -> list[dict[str, Any]]:
    """Per-step perf of the demo recipe over a local teacher process, overlap off and on."""
    from tropd.trainer.config import load_config
    from tropd.trainer.local_teacher import start_local_teacher
    from tropd.trainer.loop import train
    from tropd.trainer.run_log import read_metrics
    from tropd.trainer.setup import resolve_model_path

    steps = 2 if quick else 5
    small = ["rollout.prompts_per_step=4"] if quick else []
    teacher = start_local_teacher(resolve_model_path("builtin:teacher"), out_dir / "teacher.log")
    results = []
    try:
        for setting, extra in TIMELINE_SETTINGS.items():
            for overlap in (False, True):
                run_dir = out_dir / f"{setting}-{overlap}".replace(" ", "_").replace(",", "")
                cfg = load_config(REPO / "configs" / "demo.yaml", [
                    *extra, *small, f"rollout.overlap={str(overlap).lower()}",
                    f"teacher.target={teacher.target}", "teacher.max_in_flight=2",
                    "rollout.overlap_chunk_rows=32", f"train.steps={steps}", "task.eval_size=16",
                    "train.eval_every=1000", "train.progress=false", "train.tensorboard=false",
                    "train.status_port=null", f"train.run_dir={run_dir}",
                ])  # fmt: skip
                train(cfg)
                rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "perf/step_s" in r]
                rows = rows[1:] or rows  # the first step warms up
                keys = ("perf/step_s", "perf/rollout_s", "perf/teacher_wait_s", "perf/update_s")
                mean = {k.removeprefix("perf/"): float(np.mean([r[k] for r in rows])) for k in keys}
                mean["teacher_wait_share"] = mean["teacher_wait_s"] / mean["step_s"]
                results.append({"setting": setting, "overlap": overlap, "steps": len(rows),
                                **mean})  # fmt: skip
                print(f"{setting:28s} overlap={str(overlap):5s} step {mean['step_s']:.2f}s  "
                      f"rollout {mean['rollout_s']:.2f}s  teacher wait "
                      f"{mean['teacher_wait_s']:.2f}s ({100 * mean['teacher_wait_share']:.0f}%)  "
                      f"update {mean['update_s']:.2f}s", flush=True)  # fmt: skip
    finally:
        teacher.stop()
    return results


def quality(seeds: int, steps: int | None, out_dir: Path) -> list[dict[str, Any]]:
    """The demo recipe trained to the end per engine and seed: accuracy before and after."""
    from tropd.trainer.config import load_config
    from tropd.trainer.local_teacher import start_local_teacher
    from tropd.trainer.loop import train
    from tropd.trainer.setup import resolve_model_path

    teacher = start_local_teacher(resolve_model_path("builtin:teacher"), out_dir / "teacher.log")
    results = []
    try:
        for seed in range(seeds):
            for engine in ENGINES:
                extra = [f"train.steps={steps}"] if steps else []
                cfg = load_config(REPO / "configs" / "demo.yaml", [
                    f"rollout.engine={engine}", f"train.seed={seed}", *extra,
                    f"teacher.target={teacher.target}", "train.progress=false",
                    "train.tensorboard=false", "train.status_port=null",
                    f"train.run_dir={out_dir / f'{engine}-{seed}'}",
                ])  # fmt: skip
                run = train(cfg)
                results.append({"engine": engine, "seed": seed, "steps": run.steps_done,
                                "accuracy_before": run.accuracy_before,
                                "accuracy_after": run.accuracy_after,
                                "wall_s": run.wall_s})  # fmt: skip
                print(f"seed {seed} {engine:8s} accuracy {run.accuracy_before} -> "
                      f"{run.accuracy_after:.4f} ({run.wall_s:.0f}s)", flush=True)  # fmt: skip
    finally:
        teacher.stop()
    return results


def gpu_check(smoke: bool, out: Path | None) -> int:
    """generate vs paged on a random Qwen3-1.7B-shaped student: tokens/s, peak memory."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        print("--gpu-check needs CUDA (use --smoke for a CPU rehearsal)", file=sys.stderr)
        return 2
    shape = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)  # fmt: skip
    rows, budget = 256, 1024
    if smoke:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
        rows, budget = 4, 8
    config = Qwen3Config(vocab_size=151_936, max_position_embeddings=2048,
                         tie_word_embeddings=True, **shape)  # fmt: skip
    device = "cuda" if cuda else "cpu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16 if cuda else torch.float32
        ).to(device).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randint(0, 151_000, (int(torch.randint(32, 256, (1,), generator=g)),),
                              generator=g).tolist() for _ in range(rows)]  # fmt: skip
    eos = list(range(151_643, 151_936))  # the special ids: random weights reach them rarely
    report: dict[str, Any] = {
        "benchmark": "rollout_throughput --gpu-check",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor()})",
        "parameters": sum(p.numel() for p in model.parameters()), "rows": rows, "budget": budget,
    }  # fmt: skip
    for engine in ENGINES:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        report[engine] = _sample(engine, model, contexts, budget, eos, seed=0, batch_size=rows)
        if cuda:
            report[engine]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(engine, report[engine], flush=True)
    report["paged_over_generate"] = (
        report["paged"]["tokens_per_s"] / report["generate"]["tokens_per_s"]
    )
    path = out or RESULTS / ("rollout_gpu_smoke.json" if smoke else "rollout_gpu_check.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    cases = result["throughput"]
    x = np.arange(len(cases))
    for i, engine in enumerate(ENGINES):
        left.bar(x + (i - 0.5) * 0.4, [c[engine]["tokens_per_s"] for c in cases], 0.4,
                 label=engine)  # fmt: skip
    left.set_xticks(x, [f"{c['model']}\n{c['lengths']}" for c in cases])
    left.set_ylabel("generated tokens / s")
    left.set_title("rollout throughput (CPU)")
    left.legend()
    steps = result["timeline"]
    y = np.arange(len(steps))
    lo = np.zeros(len(steps))
    for key, color in (("rollout_s", "tab:blue"), ("teacher_wait_s", "tab:red"),
                       ("update_s", "tab:green")):  # fmt: skip
        widths = np.array([s[key] for s in steps])
        right.barh(y, widths, left=lo, color=color, label=key.removesuffix("_s"))
        lo += widths
    right.set_yticks(y, [f"{s['setting']}\noverlap {'on' if s['overlap'] else 'off'}"
                         for s in steps], fontsize=7)  # fmt: skip
    right.set_xlabel("seconds per step (mean)")
    right.set_title("demo recipe step timeline")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, short rows")
    p.add_argument("--quality", action="store_true", help="3 seeds of the demo recipe per engine")
    p.add_argument("--seeds", type=int, default=3, help="with --quality (default: 3)")
    p.add_argument("--steps", type=int, help="with --quality: steps per run (default: recipe's)")
    p.add_argument("--gpu-check", action="store_true", help="~1.7B-shaped student on CUDA")
    p.add_argument("--smoke", action="store_true", help="with --gpu-check: tiny shapes on CPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu_check:
        sys.exit(gpu_check(args.smoke, args.out))
    work = Path(tempfile.mkdtemp(prefix="rollout_bench_"))
    host = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": args.threads, "load_avg_at_start": os.getloadavg()}  # fmt: skip
    if args.quality:
        runs = quality(args.seeds, args.steps, work)
        report: dict[str, Any] = {"benchmark": "rollout_throughput --quality", "host": host,
                                  "runs": runs}  # fmt: skip
        for engine in ENGINES:
            after = [r["accuracy_after"] for r in runs if r["engine"] == engine]
            report[f"{engine}_accuracy_after_mean"] = float(np.mean(after))
            report[f"{engine}_accuracy_after_std"] = float(np.std(after))
        path = args.out or RESULTS / "rollout_quality.json"
    else:
        report = {"benchmark": "rollout_throughput", "host": host,
                  "throughput": throughput(args.quick),
                  "timeline": timeline(args.quick, work)}  # fmt: skip
        report["host"]["load_avg_at_end"] = os.getloadavg()
        name = "rollout_throughput_quick.json" if args.quick else "rollout_throughput.json"
        path = args.out or RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if "throughput" in report:
        plot(report, path.with_suffix(".png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
