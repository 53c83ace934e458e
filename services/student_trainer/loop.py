"""The TrOPD recipe, top to bottom: set up, then per step sample prompts, (get teacher drafts),
roll out the student, have the teacher grade every token, update, log, evaluate, checkpoint.

    tropd-train run --config configs/tropd.yaml [key.sub=value ...]

Knows the teacher only through `tropd.teacher.client` (token ids in, numpy arrays out).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tropd.teacher.client import TeacherClientError
from tropd.trainer import steps
from tropd.trainer.checkpoint import (
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dir_name,
)
from tropd.trainer.config import RunConfig, dump_config
from tropd.trainer.errors import TrainingAborted
from tropd.trainer.evaluate import evaluate_student
from tropd.trainer.plots import plot_run
from tropd.trainer.run_log import RunLogger
from tropd.trainer.setup import Session, open_session
from tropd.trainer.update import apply_update

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


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Only the main thread may install handlers (tests may run the loop elsewhere).
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        log.warning(
            "received %s: finishing this step, then checkpointing", signal.Signals(signum).name
        )
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint(s: Session, step: int, data_rng: np.random.Generator) -> None:
    if (s.run_dir / "checkpoints" / step_dir_name(step)).is_dir():
        return  # resumed from this very step and trained no further
    s.status.set_state("checkpointing")
    state = TrainState(step=step, data_state={"numpy_bit_generator": data_rng.bit_generator.state})
    save_checkpoint(
        s.run_dir,
        step,
        s.model,
        s.tokenizer,
        s.optimizer,
        state,
        s.cfg.model_dump(mode="json"),
        keep_last=s.cfg.train.keep_last,
    )
    s.status.mark_checkpoint(step)


def _evaluate(s: Session, step: int, logger: RunLogger) -> float:
    s.status.set_state("evaluating")
    result = evaluate_student(s.model, s.tokenizer, s.task, s.eval_examples)
    logger.log(step, {"eval/accuracy": result.accuracy})
    s.status.update_eval(step, result.accuracy)
    prompt, completion, ok = result.samples[0]
    log.info(
        "step %d eval accuracy %.3f  e.g. %s -> %s (%s)",
        step,
        result.accuracy,
        prompt,
        completion,
        "ok" if ok else "wrong",
    )
    return result.accuracy


def _resume(s: Session) -> tuple[int, np.random.Generator]:
    """The step to start from and the prompt sampler, from the newest good checkpoint if any."""
    data_rng = np.random.default_rng(s.cfg.train.seed)
    latest = find_latest_checkpoint(s.run_dir) if s.cfg.train.resume else None
    if latest is None:
        torch.manual_seed(s.cfg.train.seed)  # rollouts sample from the global torch RNG
        return 0, data_rng
    state = load_checkpoint(latest, s.model, s.optimizer)  # restores the RNGs too
    data_rng.bit_generator.state = state.data_state["numpy_bit_generator"]
    log.info("resumed from %s (step %d)", latest, state.step)
    return state.step, data_rng


def _train_step(s: Session, step: int, data_rng: np.random.Generator) -> dict[str, float]:
    """One optimizer step; returns its metrics."""
    t_step = time.monotonic()
    # 1-3. Prompts, guidance drafts, student rollouts and the teacher's grades.
    batch = steps.collect(s, step, data_rng)
    # 4. Micro-batched forward/backward, clip, AdamW (skipped when non-finite). The trust
    # test's uniforms are seeded by step, so a resumed run draws the same ones.
    trust_gen = torch.Generator().manual_seed(s.cfg.train.seed * 1_000_003 + step)
    update = apply_update(
        s.model, s.optimizer, batch.sequences, batch.scores, s.cfg.loss, s.cfg.optim,
        trust_gen, s.pad_id,
    )  # fmt: skip
    return steps.step_metrics(batch, update, time.monotonic() - t_step)


def train(cfg: RunConfig) -> RunResult:
    """Run (or resume) one training job to completion, a stop signal, or a teacher outage."""
    t0 = time.monotonic()
    s = open_session(cfg)  # models, task, teacher checks, optimizer, run dir, status server
    try:
        return _run(s, t0)
    finally:
        s.close()


def _run(s: Session, t0: float) -> RunResult:
    cfg = s.cfg
    (s.run_dir / "config.yaml").write_text(dump_config(cfg))
    start_step, data_rng = _resume(s)
    logger = RunLogger(s.run_dir, tensorboard=cfg.train.tensorboard, resume_step=start_step)
    accuracy_before = _evaluate(s, 0, logger) if start_step == 0 else None
    accuracy = accuracy_before if accuracy_before is not None else float("nan")
    step, evaluated = start_step, True
    stop = _StopFlag()
    progress = steps.progress_bar(cfg, start_step)
    s.status.set_state("training")
    try:
        while step < cfg.train.steps and not stop.requested:
            metrics = _train_step(s, step, data_rng)
            step += 1
            logger.log(step, metrics)
            s.status.update_step(step, metrics)
            steps.advance(progress, metrics)
            evaluated = step % cfg.train.eval_every == 0 or step == cfg.train.steps
            if evaluated:
                accuracy = _evaluate(s, step, logger)
            if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                _checkpoint(s, step, data_rng)
            s.status.set_state("training")
        if not evaluated:  # stopped early by a signal
            accuracy = _evaluate(s, step, logger)
    except TeacherClientError as exc:
        _checkpoint(s, step, data_rng)
        s.status.set_state("failed", str(exc))
        raise TrainingAborted(
            f"teacher at {cfg.teacher.target} unavailable after {cfg.teacher.max_retries} "
            f"retries: {exc}; checkpoint written at step {step}, rerun the same command to resume"
        ) from exc
    finally:
        progress.close()
        stop.restore()
        logger.close()
    _checkpoint(s, step, data_rng)
    plots = plot_run(s.run_dir)
    s.status.set_state("done" if step >= cfg.train.steps else "stopped")
    log.info(
        "run %s: %d steps, accuracy %.3f, plots in %s",
        cfg.name,
        step,
        accuracy,
        s.run_dir / "plots",
    )
    return RunResult(
        run_dir=s.run_dir,
        steps_done=step,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy,
        plots=tuple(plots),
        wall_s=time.monotonic() - t0,
        stopped_early=step < cfg.train.steps,
    )
