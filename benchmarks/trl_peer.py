"""The peer row of the quality benchmark: TRL's on-policy `DistillationTrainer`, dense reverse KL.

    bash benchmarks/setup_trl_env.sh                      # its own venv; never a tropd dependency
    /work/trl-venv/bin/python benchmarks/trl_peer.py --settings default --seeds 0 1 2
    .venv/bin/python benchmarks/distill_quality.py --from-runs runs/bench/issue20 --out ...

Runs TRL's `DistillationTrainer` (beta = 1: reverse KL over the full vocabulary, the teacher in
the same process) on the public settings of `distill_quality.py`, with the same budget and the
same evaluation, and writes each run where `distill_quality.py --from-runs` reads it
(`<runs>/<setting>/trl_dense_rkl/seed<k>/`: metrics.jsonl with `eval/accuracy`,
`train/grad_norm`, `loss/total`; config.yaml), so its tables get a "TRL dense reverse KL" row.

Matched to the recipe (`configs/bench/<setting>.yaml`): the same student and teacher, the same
prompts in the same order (tropd's `PromptSampler` with the run's seed, each prompt repeated
`samples_per_prompt` times in a row, TRL's shuffling off: one TRL step = the same 16 prompts x 4
samples = 64 rollouts), the same prompt token ids (tropd's prompt codec; TRL would tokenize the
text itself), the same eos ids and response budget, rollout temperature 0.7 (TRL's
`generation_kwargs`) with the loss on the untempered distributions (TRL's `temperature` = 1, as
tropd's losses), AdamW with the recipe's lr, weight decay and betas, grad clip 1.0, constant lr
(no warm-up, no decay), float32 (no bf16), no gradient checkpointing, loss = token mean over the
step's completion tokens; eval = tropd's `evaluate_student` (greedy, the recipe's eval set and
verifier) at step 0 and every `train.eval_every` steps.

Where it differs (cannot be matched): TRL computes its loss with its own chunked dense kernel
and its own sampling loop (`generate`'s sampler, seeded by `set_seed(seed)`), so rollouts are
not the same draws as tropd's for a seed; its dropout follows the model config as tropd's does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # distill_quality beside this one

# The same settings, worlds and recipes as the benchmark whose tables this row joins.
from distill_quality import (  # noqa: E402
    BENCH_CONFIGS,
    OPT_IN_SETTINGS,
    SETTINGS,
    WORLDS,
    teacher_model,
)

METHOD = "trl_dense_rkl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=[*SETTINGS, *OPT_IN_SETTINGS],
                   default=list(SETTINGS))  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "bench" / "issue20")
    p.add_argument("--workers", type=int, default=2, help="training processes at once")
    p.add_argument("--deadline-min", type=float, help="skip runs not started after this long")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="tropd recipe overrides")
    return p.parse_args(argv)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One TRL run in a worker process; returns a summary line's fields (never raises)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    base = {k: job[k] for k in ("setting", "seed")}
    if job["deadline"] is not None and time.time() > job["deadline"]:
        return {**base, "status": "cut"}
    t0 = time.monotonic()
    try:
        accs = _train(job)
        status, error = "ok", None
    except Exception as exc:  # a failed run is a result, reported, not a crash of the sweep
        accs, status, error = [], "failed", f"{type(exc).__name__}: {exc}"
    wall = time.monotonic() - t0
    print(f"  {job['setting']:>8} {METHOD} seed {job['seed']}: {status} {accs} ({wall:.0f}s)"
          + (f" {error}" if error else ""), flush=True)  # fmt: skip
    return {**base, "status": status, "error": error, "wall_s": wall, "evals": accs}


def _train(job: dict[str, Any]) -> list[float]:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from tropd.trainer.config import dump_config, load_config
    from tropd.trainer.evaluate import evaluate_student
    from tropd.trainer.run_log import RunLogger
    from tropd.trainer.sampler import PromptSampler
    from tropd.trainer.setup import load_data, load_student, resolve_model_path

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(job["config"], [*job["overrides"], f"train.seed={job['seed']}",
                                      f"train.run_dir={run_dir}"])  # fmt: skip
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    student = load_student(cfg)
    data = load_data(cfg, student.tokenizer, student.generation_eos)
    teacher = AutoModelForCausalLM.from_pretrained(resolve_model_path(job["teacher"]))
    ids_of = {str(i): list(p) for i, p in enumerate(data.codec.encode(data.train))}

    # The prompts tropd's loop would draw for this seed, each repeated samples_per_prompt times.
    sampler = PromptSampler(len(data.train), cfg.train.seed, cfg.task.sampling)
    rows = [
        {"prompt": str(i)}
        for _ in range(cfg.train.steps)
        for i in sampler.draw(cfg.rollout.prompts_per_step)
        for _ in range(cfg.rollout.samples_per_prompt)
    ]
    batch = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt

    class _TropdPrompts(DistillationTrainer):  # type: ignore[misc]
        """TRL's trainer fed tropd's prompt token ids: by hand, because TRL tokenizes the raw
        text itself and we need the exact ids tropd's rollouts and teacher see."""

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            return [ids_of[p] for p in prompts], None, {}

    logger = RunLogger(run_dir, tensorboard=False)
    accs: list[float] = []

    def evaluate(step: int) -> None:
        result = evaluate_student(student.model, data.codec, data.task, data.eval,
                                  data.max_new_tokens)  # fmt: skip
        accs.append(round(result.accuracy, 3))
        logger.log(step, {"eval/accuracy": result.accuracy})

    class _Evals(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            evaluate(0)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                values = {"loss/total": logs["loss"], "train/grad_norm": logs["grad_norm"]}
                logger.log(state.global_step, {k: float(v) for k, v in values.items()})

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                evaluate(step)

    args = DistillationConfig(
        output_dir=str(run_dir / "trl"),
        beta=1.0,  # reverse KL
        temperature=1.0,  # the loss on untempered distributions, as tropd's losses
        generation_kwargs={
            "temperature": cfg.rollout.temperature,
            "eos_token_id": list(data.codec.eos_ids),
        },  # fmt: skip
        max_completion_length=data.max_new_tokens,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=cfg.train.steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        max_grad_norm=cfg.optim.grad_clip,
        lr_scheduler_type="constant",
        warmup_steps=0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        shuffle_dataset=False,
        seed=cfg.train.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = _TropdPrompts(
        model=student.model,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=student.tokenizer,
        callbacks=[_Evals()],
    )
    trainer.train()
    logger.close()
    return accs


def plan_jobs(args: argparse.Namespace, deadline: float | None) -> list[dict[str, Any]]:
    """One job per (setting, seed): its recipe, its world's student and teacher, its run folder."""
    return [
        {
            "setting": setting,
            "seed": seed,
            "config": str(BENCH_CONFIGS / f"{setting}.yaml"),
            "overrides": [*_student(setting), *args.overrides],
            "teacher": teacher_model(setting),
            "run_dir": str(args.runs / setting / METHOD / f"seed{seed}"),
            "deadline": deadline,
        }
        for setting in args.settings
        for seed in args.seeds
    ]


def _student(setting: str) -> list[str]:
    """The override pointing the recipe at its world's student (none on the built-in world)."""
    return [f"student.path={WORLDS[setting][1]}"] if setting in WORLDS else []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    jobs = plan_jobs(args, t0 + 60 * args.deadline_min if args.deadline_min else None)
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    print(json.dumps({"wall_s": round(time.time() - t0, 1), "runs": results}))
    return 0 if all(r["status"] != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
