"""Does the `surprise` weight switch TrOPD's outlier term off late in long answers? (issue 8)

    .venv/bin/python benchmarks/outlier_weight_positions.py worlds/builtin worlds/long \
        worlds/long=runs/bench/distill_quality_long/long/tropd_surprise/seed0/checkpoints/step-000050

For each world folder (`WORLD=STUDENT_DIR`: another student, e.g. a run's final checkpoint, with
that world's task and teacher): sample the student's rollouts the way the quality benchmark does
(`rollout.sample_completions`, temperature 0.7, 16 prompts x 4 samples per batch), score them with
the world's teacher in-process, and report per third of the response (by position) the expected
outlier share `E[1 - p_trust]`, the outlier-weighted mean surprise weight
`sum((1 - p_trust) * w_t) / sum(1 - p_trust)` (what `train/outlier_weight` averages, without the
Bernoulli draw), and the share of that outlier mass with `w_t < 0.1`. `w_t = exp(-S_t / s0)`,
`S_t = sum_{j<t} max(0, -lp_T(x_j) - c)` as in `losses.outlier_weights` (c = 2, s0 = 4). Forward
passes only: about a minute per world on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.trainer.losses.outlier_weights import earlier_sum
from tropd.trainer.rollout import sample_completions
from tropd.trainer.tasks.base import Task
from tropd.trainer.world import world_task


def world_rows(
    world: Path, task: Task, student_dir: Path, batches: int, temperature: float, c: float,
    s0: float, seed: int,
) -> list[tuple[str, float, float, float, int]]:
    """[(third, outlier share, mean w on outliers, share of outlier mass with w < 0.1, tokens)]."""
    tokenizer = AutoTokenizer.from_pretrained(world / "student")
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(world / "teacher").eval()
    examples = task.train_examples()
    sums = torch.zeros(3, 4, dtype=torch.float64)  # per third: tokens, sum q, sum q*w, sum q*[w<.1]
    torch.manual_seed(seed)
    for b in range(batches):
        prompts = [e.prompt for e in examples[b * 16 : (b + 1) * 16]]
        contexts = tokenizer(prompts)["input_ids"]
        completions = sample_completions(
            student, contexts, 4, task.max_new_tokens, [tokenizer.eos_token_id],
            tokenizer.pad_token_id, temperature,
        )  # fmt: skip
        for comp in completions:
            ctx = contexts[comp.context_index]
            ids = torch.tensor([*ctx, *comp.ids.tolist()])
            with torch.no_grad():
                logits = teacher(ids[None]).logits[0, len(ctx) - 1 : -1].float()
            lp_t = torch.log_softmax(logits, -1).gather(-1, ids[len(ctx) :, None])[:, 0]
            lp_s = torch.from_numpy(comp.behavior_logprobs).double()
            q = 1 - torch.exp(lp_t.double() - lp_s).clamp(max=1.0)  # P(M_t = 0)
            surprise = earlier_sum((-lp_t.double() - c).clamp(min=0.0)[None])[0]
            w = torch.exp(-surprise / s0)
            third = torch.div(torch.arange(len(w)) * 3, len(w), rounding_mode="floor")
            for k in range(3):
                sel = third == k
                sums[k] += torch.stack(
                    [sel.sum(), q[sel].sum(), (q * w)[sel].sum(), (q * (w < 0.1))[sel].sum()]
                ).double()
    names = ("first third", "middle third", "last third")
    return [
        (names[k], float(s[1] / s[0]), float(s[2] / s[1]), float(s[3] / s[1]), int(s[0]))
        for k, s in enumerate(sums)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("worlds", nargs="+", help="world folders (teacher/, student/), or WORLD=STUDENT")
    p.add_argument("--batches", type=int, default=4, help="batches of 16 prompts x 4 samples")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--c", type=float, default=2.0)
    p.add_argument("--s0", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    plan = []
    for entry in args.worlds:  # check every argument before the first (slow) world
        world_arg, _, student_arg = entry.partition("=")
        world = Path(world_arg)
        student = Path(student_arg) if student_arg else world / "student"
        if not (world / "world.json").is_file():
            p.error(f"{world}: not a world folder (no world.json)")
        if not (student / "config.json").is_file():
            p.error(f"{student}: not a model folder (no config.json)")
        label = world.name if not student_arg else f"{world.name} ({student})"
        plan.append((world, student, label))
    torch.set_num_threads(1)
    print(
        "| world (student) | answer tokens | position | outlier share | mean w_t on outliers "
        "| outlier mass with w_t < 0.1 | tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    for world, student, label in plan:
        task = world_task(world)
        for name, share, w, low, n in world_rows(
            world, task, student, args.batches, args.temperature, args.c, args.s0, args.seed
        ):
            print(
                f"| {label} | {task.max_new_tokens} | {name} | {share:.3f} | {w:.3f} | {low:.3f} "
                f"| {n} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
