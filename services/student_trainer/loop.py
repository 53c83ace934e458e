"""The TrOPD recipe, top to bottom: set up, then per step sample prompts, roll out the student
(some responses opening with a teacher-written prefix), have the teacher grade every token,
update, then log, evaluate and checkpoint.

    tropd-train run --config configs/tropd.yaml [key.sub=value ...]

This file is the training step; each stage is a call whose arguments say what it reads
(docs/architecture.md#one-training-step). Knows the teacher only through `tropd.teacher.client`
(token ids in, numpy arrays out).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tropd.teacher.client import ScoredSequence, TeacherClientError
from tropd.trainer.batch import draft_sequences, trained_tokens
from tropd.trainer.checkpoint import (
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dir_name,
)
from tropd.trainer.config import RunConfig, dump_config
from tropd.trainer.dip import warn_if_dipped
from tropd.trainer.distributed import join, prompt_seeds, row_seeds
from tropd.trainer.evaluate import evaluate_student, report_start
from tropd.trainer.grades import Grades
from tropd.trainer.guidance import Drafts
from tropd.trainer.keep_best import BestKeeper
from tropd.trainer.losses import needs_student_topk, needs_teacher_scores
from tropd.trainer.plots import plot_run
from tropd.trainer.rollout import roll_out
from tropd.trainer.routing import connect_teachers
from tropd.trainer.run_log import NoLog, Progress, RunLogger, quiet_progress_bars, read_metrics
from tropd.trainer.sampler import PromptSampler
from tropd.trainer.score_stream import ScoreStream
from tropd.trainer.setup import (
    Data,
    Student,
    drafts_source,
    load_data,
    load_student,
    make_optimizer,
    start_status,
)
from tropd.trainer.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from tropd.trainer.start_anchor import StartAnchor, load_start_anchor
from tropd.trainer.stopping import OutageLog, RngAtStep, StopFlag, teacher_failure
from tropd.trainer.teacher_link import Teacher
from tropd.trainer.update import apply_update, set_learning_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps_done: int
    accuracy_before: float | None  # student accuracy at step 0 (None when resumed past it)
    accuracy_after: float
    plots: tuple[Path, ...]
    wall_s: float
    stopped_early: bool


def train(cfg: RunConfig) -> RunResult:
    """Run (or resume) one training job to completion, a stop signal, or a teacher outage."""
    t0 = time.monotonic()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not cfg.train.progress:
        quiet_progress_bars()  # the libraries' own bars too (loading weights, data sets)
    ranks = join(cfg.train.parallel, cfg.student.device, cfg.train.collective_timeout_s)
    student = load_student(cfg, ranks)  # wrapped in DDP / FSDP2 under train.parallel
    anchor = load_start_anchor(cfg)  # the frozen start behind loss.anchor_kl, or None
    data = load_data(cfg, student.tokenizer, student.generation_eos)
    teacher = connect_teachers(cfg, student, data)  # refuses a teacher that does not fit
    drafts = drafts_source(cfg, teacher, data)
    optimizer = make_optimizer(student.model, cfg.optim)
    run_dir = Path(cfg.train.run_dir)
    if ranks.is_main:  # rank 0 alone writes the run folder's logs and serves the status port
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    status, server = start_status(cfg, run_dir, serve=ranks.is_main)
    # From here on a teacher restart is waited out (logged, on /v1/status and /metrics).
    teacher.ride_outages(cfg.teacher.outage_s, OutageLog(status))

    # Resume from the newest good checkpoint: weights, optimizer, every RNG, the prompt sampler.
    sampler = PromptSampler(len(data.train), cfg.train.seed, cfg.task.sampling)
    latest = find_latest_checkpoint(run_dir) if cfg.train.resume else None
    start_step = 0
    if latest is None:
        torch.manual_seed(cfg.train.seed)  # rollouts sample from the global torch RNG
    else:
        scaler = student.precision.scaler  # float16's loss scale goes on where it was
        state = (load_sharded_checkpoint(latest, ranks, optimizer, scaler) if ranks.distributed
                 else load_checkpoint(latest, student.model, optimizer, scaler=scaler))  # fmt: skip
        sampler.restore(state.data_state)
        start_step = state.step
        log.info("resumed from %s (step %d)", latest, start_step)
    logger = (RunLogger(run_dir, tensorboard=cfg.train.tensorboard, resume_step=start_step)
              if ranks.is_main else NoLog())  # fmt: skip
    # The safety net (keep_best, early stopping) and the dip warning read the evals so far.
    # (Across processes rank 0's log holds them; another rank may see none: `ranks.any` below.)
    metrics_file = run_dir / "metrics.jsonl"
    evals = [(r["step"], r["eval/accuracy"]) for r in read_metrics(metrics_file)
             if r.get("eval/accuracy") is not None] if metrics_file.exists() else []  # fmt: skip
    keeper = BestKeeper(run_dir, cfg.train.keep_best, cfg.train.early_stop_evals, evals)

    def evaluate(step: int) -> float:
        status.set_state("evaluating")
        with student.precision.autocast(), ranks.full_weights():  # every rank evaluates all
            result = evaluate_student(student.model, data.codec, data.task, data.eval,
                                      data.max_new_tokens)  # fmt: skip
        logger.log(step, {"eval/accuracy": result.accuracy})
        status.update_eval(step, result.accuracy)
        if step == 0:
            report_start(result)
        else:
            log.info("step %d eval accuracy %.3f  e.g. %s", step, result.accuracy,
                     result.samples[0].describe())  # fmt: skip
        evals.append((step, result.accuracy))
        # Every rank counts the eval (the same on each, so early stopping agrees); rank 0 saves.
        keeper.observe(step, result.accuracy, student.model, student.tokenizer,
                       ranks.hf_state_dict if ranks.distributed else None,
                       save=ranks.is_main)  # fmt: skip
        if cfg.train.dip_warn_points is not None and ranks.is_main:
            warn_if_dipped(step, result.accuracy, dict(evals).get(0), cfg.train.dip_warn_points,
                           metrics_file)  # fmt: skip
        return result.accuracy

    def checkpoint(step: int) -> None:
        if (run_dir / "checkpoints" / step_dir_name(step)).is_dir():
            return  # resumed from this very step and trained no further
        status.set_state("checkpointing")
        state = TrainState(step, sampler.state())
        if ranks.distributed:  # every rank writes its shards; rank 0 the export and the rename
            save_sharded_checkpoint(run_dir, step, ranks, student.model, student.tokenizer,
                                    optimizer, state, cfg.model_dump(mode="json"),
                                    keep_last=cfg.train.keep_last,
                                    scaler=student.precision.scaler)  # fmt: skip
        else:
            save_checkpoint(run_dir, step, student.model, student.tokenizer, optimizer, state,
                            cfg.model_dump(mode="json"), keep_last=cfg.train.keep_last,
                            scaler=student.precision.scaler)  # fmt: skip
        status.mark_checkpoint(step)

    stop = StopFlag()
    progress = Progress(cfg.name, cfg.train.steps, start_step,
                        enabled=cfg.train.progress and ranks.is_main)  # fmt: skip
    accuracy_before = evaluate(0) if start_step == 0 else None
    accuracy = float("nan") if accuracy_before is None else accuracy_before
    step, evaluated = start_step, True
    status.set_state("training")
    step_start = RngAtStep.take(sampler)
    try:
        # Ranks agree on stopping (each sees SIGTERM at its own moment) and so stop together.
        while step < cfg.train.steps and not ranks.any(stop.requested or keeper.should_stop):
            step_start = RngAtStep.take(sampler)
            metrics = train_step(cfg, step, student, optimizer, data, sampler, teacher, drafts,
                                 anchor)  # fmt: skip
            step += 1
            logger.log(step, metrics)
            status.update_step(step, metrics)
            progress.advance(metrics)
            evaluated = step % cfg.train.eval_every == 0 or step == cfg.train.steps
            if evaluated:
                accuracy = evaluate(step)
            if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                checkpoint(step)
            status.set_state("training")
        if not evaluated:  # stopped early by a signal
            accuracy = evaluate(step)
        if keeper.should_stop:
            log.info("stopped early at step %d: %d evals without a new best", step,
                     keeper.since_best)  # fmt: skip
    except TeacherClientError as exc:
        # The failed step drew prompts and rollout samples; a checkpoint taken now must hold
        # the RNGs as they were before it, so that resuming replays that step exactly.
        step_start.restore(sampler)
        if not ranks.distributed:  # the other ranks are not here: torchrun stops them
            checkpoint(step)
        status.set_state("failed", str(exc))
        raise teacher_failure(cfg, exc, step) from exc
    finally:
        progress.close()
        stop.restore()
        logger.close()
        teacher.close()
        if server is not None:
            server.stop()
    checkpoint(step)
    if step < cfg.train.steps:  # every rank says so: a torchrun log shows that all stopped
        log.warning("rank %d of %d stopped by a signal at step %d (checkpoint written)",
                    ranks.rank, ranks.world, step)  # fmt: skip
    ranks.close()
    plots = plot_run(run_dir) if ranks.is_main else []
    status.set_state("done" if step >= cfg.train.steps else "stopped")
    log.info("run %s: %d steps, accuracy %.3f, plots in %s", cfg.name, step, accuracy,
             run_dir / "plots")  # fmt: skip
    return RunResult(run_dir, step, accuracy_before, accuracy, tuple(plots),
                     time.monotonic() - t0, step < cfg.train.steps)  # fmt: skip


def train_step(
    cfg: RunConfig,
    step: int,
    student: Student,
    optimizer: torch.optim.Optimizer,
    data: Data,
    sampler: PromptSampler,
    teacher: Teacher,
    drafts: Drafts,
    anchor: StartAnchor | None = None,
) -> dict[str, float]:
    """One optimizer step, stage by stage; returns its metrics (the run log's keys)."""
    t_step = time.monotonic()
    # 1. Prompts from the seeded sampler (each once per epoch by default; a resumed run draws
    # the same ones), as ids: these exact ids go to the rollout and to the teacher.
    # Across processes each rank takes its slice of the one seeded order.
    share = student.ranks.share(cfg.rollout.prompts_per_step)
    examples = [data.train[i] for i in sampler.draw(cfg.rollout.prompts_per_step)[share]]
    prompts = data.codec.encode(examples)

    # 2. Rollouts. `sft` trains on the teacher's drafts as they are; every other method samples
    # the student (`rollout.engine`), the first `guidance.fraction` of the prompts continuing a
    # teacher prefix. With `rollout.overlap`, finished rows already go to the teacher meanwhile.
    t0 = time.monotonic()
    overlap = cfg.rollout.overlap and needs_teacher_scores(cfg.loss)
    stream = ScoreStream(teacher, examples, cfg.loss, cfg.routing.default,
                         cfg.rollout.overlap_chunk_rows if overlap else None)  # fmt: skip
    if cfg.loss.method == "sft":
        sequences = draft_sequences(prompts, drafts.for_step(step, examples, prompts),
                                    data.codec.eos_ids)  # fmt: skip
        prefixes = [np.zeros(0, np.int64)] * len(prompts)
        draft_s, rollout_s = time.monotonic() - t0, 0.0
    else:
        prefixes = drafts.prefixes(step, cfg.train.steps, examples, prompts)
        draft_s = time.monotonic() - t0
        # `rkl_topk` reads the student's own top-k at each token: the rollout records the ids.
        own_topk = cfg.loss.student_topk if needs_student_topk(cfg.loss) else 0
        # Across processes each prompt samples from its own seed, so a prompt's rollouts are the
        # same whichever rank draws it (one process: the global RNG, as always).
        seeds = prompt_seeds(cfg.train.seed, step, share) if student.ranks.distributed else None
        with student.precision.autocast(), student.ranks.full_weights():
            sequences = roll_out(student.engine, student.model, prompts, prefixes, cfg.rollout,
                                 data.max_new_tokens, data.codec.eos_ids, student.pad_id,
                                 own_topk, on_finished=stream.add,
                                 prompt_seeds=seeds)  # fmt: skip
        rollout_s = time.monotonic() - t0 - draft_s
    # Verdicts (train-time accuracy only): the verifier sees the example, the response's text
    # and ids, and why it stopped.
    correct = [
        data.task.verify(examples[q.prompt_index],
                         data.codec.response(q.response_ids, q.finish_reason))
        for q in sequences
    ]  # fmt: skip

    # 3. The teacher grades every response token (the `sft` baseline reads no grades); what
    # was sent during the rollout may be done already: the wait is what the student sits idle.
    t1 = time.monotonic()
    grades, per_teacher = Grades([], 0.0, 0.0), dict[str, float]()
    scores: list[ScoredSequence | None] = [None] * len(sequences)
    if needs_teacher_scores(cfg.loss):
        grades, per_teacher = stream.finish(sequences)
        scores = list(grades.scores)
    teacher_wait_s = time.monotonic() - t1
    teacher_s = draft_s + teacher_wait_s

    # 4. Micro-batched forward/backward, clip, AdamW (skipped when non-finite), at the step's
    # learning rate (warm-up). The trust test's uniforms are seeded by step, so a resumed run
    # draws the same ones. With `loss.anchor_kl` the frozen start scores the rollouts too. An
    # engine with its own copy of the weights takes the new ones.
    t2 = time.monotonic()
    lr = set_learning_rate(optimizer, cfg.optim, step)
    trust_gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    trust_seeds = (row_seeds(cfg.train.seed, step, share.start * cfg.rollout.samples_per_prompt,
                             len(sequences)) if student.ranks.distributed else None)  # fmt: skip
    anchor_now = None if anchor is None else anchor.at(step)
    update = apply_update(student.model, optimizer, sequences, scores, cfg.loss, cfg.optim,
                          trust_gen, student.pad_id, student.precision, student.ranks,
                          trust_seeds, anchor_now)  # fmt: skip
    student.engine.load_weights(student.model)
    update_s = time.monotonic() - t2

    # 5. Metrics: loss-side names become run-log names (loss_pg -> loss/pg); the token counts
    # (train/response_tokens on-policy, train/prefix_tokens, train/trained_tokens) come from there.
    seconds = time.monotonic() - t_step
    return {
        **{_metric_key(k): v for k, v in update.metrics.items()},
        "train/grad_norm": update.grad_norm,
        "train/lr": lr,
        **({"train/anchor_coef": anchor_now.coef} if anchor_now else {}),
        "train/skipped": 0.0 if update.applied else 1.0,
        "train/accuracy": student.ranks.mean(correct),  # over every rank's rollouts
        "train/guidance_prefix_len": student.ranks.mean([p.size for p in prefixes]),
        "perf/tokens_per_s": student.ranks.sum(trained_tokens(sequences)) / max(seconds, 1e-9),
        "perf/step_s": seconds,
        "perf/rollout_s": rollout_s,
        "perf/teacher_wait_s": teacher_wait_s,
        "perf/update_s": update_s,
        "perf/teacher_s": teacher_s,
        "perf/teacher_queue_s": grades.queue_seconds,
        "perf/teacher_compute_s": grades.compute_seconds,
        **per_teacher,  # teacher/<name>/... with several teachers
    }


def _metric_key(loss_key: str) -> str:
    """loss_pg -> loss/pg, trust_frac -> train/trust_fraction, other -> train/other."""
    if loss_key.startswith("loss_"):
        return "loss/" + loss_key.removeprefix("loss_")
    return "train/" + {"trust_frac": "trust_fraction"}.get(loss_key, loss_key)
