"""The data side of a training step: prompts -> (drafts) -> student rollouts -> teacher grades.

Also the step's metrics and the progress bar. The update itself lives in `update.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tropd.teacher.client import ScoredSequence
from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import RunConfig
from tropd.trainer.evaluate import decode_text, encode_prompts
from tropd.trainer.guidance import drafts_for, strip_eos, teacher_drafts
from tropd.trainer.losses import guidance_prefix_len, needs_teacher_entropy, needs_topk
from tropd.trainer.rollout import sample_completions
from tropd.trainer.setup import Session
from tropd.trainer.tasks.base import Example
from tropd.trainer.update import UpdateResult


@dataclass
class StepBatch:
    sequences: list[TrainSequence]
    scores: list[ScoredSequence | None]
    teacher_seconds: float  # wall time of the step's teacher calls (Score and Generate)
    rollout_seconds: float
    teacher_queue_seconds: float  # what the teacher reports for the step's Score calls:
    teacher_compute_seconds: float  # time queued behind other work, and forward time
    mean_prefix_len: float
    train_accuracy: float


def _drafts(
    s: Session, step: int, examples: list[Example], prompts: list[list[int]]
) -> list[np.ndarray]:
    g = s.cfg.guidance
    if s.draft_table is not None:
        return drafts_for(examples, s.draft_table, str(g.drafts_file))
    seed = s.cfg.train.seed * 1_000_003 + step
    return teacher_drafts(s.client, prompts, s.max_new_tokens, s.eos_id, g.temperature, seed)


def _sft_sequences(
    s: Session, examples: list[Example], prompts: list[list[int]], drafts: list[np.ndarray]
) -> list[TrainSequence]:
    """The `sft` baseline trains on the teacher's drafts themselves, teacher-forced."""
    out = []
    for p, (ex, prompt, draft) in enumerate(zip(examples, prompts, drafts, strict=True)):
        text = decode_text(s.tokenizer, draft)
        out.append(
            TrainSequence(
                prompt_index=p,
                context_len=len(prompt),
                ids=np.concatenate([np.asarray(prompt), draft]),
                prefix_len=0,
                behavior_logprobs=np.zeros(draft.size, np.float32),
                correct=s.task.verify(ex, text),
            )
        )
    return out


def _on_policy_sequences(
    s: Session, step: int, examples: list[Example], prompts: list[list[int]]
) -> tuple[list[TrainSequence], float, float]:
    cfg = s.cfg
    n_guided = int(round(cfg.guidance.fraction * len(prompts)))
    prefixes: list[np.ndarray] = [np.zeros(0, np.int64)] * len(prompts)
    t_teacher = 0.0
    if n_guided:
        t0 = time.monotonic()
        drafts = _drafts(s, step, examples[:n_guided], prompts[:n_guided])
        t_teacher = time.monotonic() - t0
        for i, draft in enumerate(drafts):
            draft = strip_eos(draft, s.eos_id)
            prefixes[i] = draft[: guidance_prefix_len(step, cfg.train.steps, int(draft.size))]
    contexts = [list(p) + prefix.tolist() for p, prefix in zip(prompts, prefixes, strict=True)]
    # A response (prefix + continuation) gets the same token budget as an unguided one.
    completions = sample_completions(
        s.model,
        contexts,
        cfg.rollout.samples_per_prompt,
        s.max_new_tokens - min(int(p.size) for p in prefixes),
        s.eos_id,
        s.pad_id,
        temperature=cfg.rollout.temperature,
    )
    sequences = []
    for c in completions:
        prefix = prefixes[c.context_index]
        response = np.concatenate([prefix, c.ids])[: s.max_new_tokens]
        text = decode_text(s.tokenizer, response)
        sequences.append(
            TrainSequence(
                prompt_index=c.context_index,
                context_len=len(prompts[c.context_index]),
                ids=np.concatenate([np.asarray(prompts[c.context_index], np.int64), response]),
                prefix_len=int(prefix.size),
                behavior_logprobs=np.concatenate(
                    [np.full(prefix.size, np.nan, np.float32), c.behavior_logprobs]
                )[: response.size],
                correct=s.task.verify(examples[c.context_index], text),
            )
        )
    mean_prefix = float(np.mean([p.size for p in prefixes])) if prefixes else 0.0
    return sequences, t_teacher, mean_prefix


@dataclass
class _Grades:
    scores: list[ScoredSequence]
    queue_seconds: float  # summed over the requests, as the teacher reported them
    compute_seconds: float


def _score(s: Session, sequences: list[TrainSequence]) -> _Grades:
    """Teacher grades for every response token, in requests that respect the teacher's limits."""
    extras = ("entropy",) if needs_teacher_entropy(s.cfg.loss) else ()
    # k may exceed a small vocabulary; the loss uses every column it gets.
    top_k = min(s.cfg.loss.topk, s.teacher.vocab_size) if needs_topk(s.cfg.loss) else 0
    grades = _Grades([], 0.0, 0.0)
    budget = s.teacher.limits.max_request_tokens
    lo = 0
    while lo < len(sequences):
        hi, tokens = lo, 0
        while hi < len(sequences) and (hi == lo or tokens + sequences[hi].ids.size <= budget):
            tokens += sequences[hi].ids.size
            hi += 1
        chunk = sequences[lo:hi]
        results = s.client.score(
            [q.ids for q in chunk], starts=[q.context_len for q in chunk], top_k=top_k,
            extras=extras,
        )  # fmt: skip
        grades.scores.extend(results)
        grades.queue_seconds += results.timing.queue_seconds
        grades.compute_seconds += results.timing.compute_seconds
        lo = hi
    return grades


def collect(s: Session, step: int, data_rng: np.random.Generator) -> StepBatch:
    """Sample the step's prompts, roll out, and get the teacher's grades (not for `sft`)."""
    cfg = s.cfg
    picks = data_rng.choice(len(s.train_examples), size=cfg.rollout.prompts_per_step, replace=True)
    examples = [s.train_examples[i] for i in picks]
    prompts = encode_prompts(s.tokenizer, examples)
    t0 = time.monotonic()
    if cfg.loss.method == "sft":
        drafts = _drafts(s, step, examples, prompts)
        teacher_s = time.monotonic() - t0
        sequences = _sft_sequences(s, examples, prompts, drafts)
        return StepBatch(
            sequences, [None] * len(sequences), teacher_s, 0.0, 0.0, 0.0, 0.0,
            _accuracy(sequences),
        )  # fmt: skip
    sequences, teacher_s, mean_prefix = _on_policy_sequences(s, step, examples, prompts)
    rollout_s = time.monotonic() - t0 - teacher_s
    t1 = time.monotonic()
    grades = _score(s, sequences)
    teacher_s += time.monotonic() - t1
    scores: list[ScoredSequence | None] = list(grades.scores)
    return StepBatch(
        sequences, scores, teacher_s, rollout_s, grades.queue_seconds, grades.compute_seconds,
        mean_prefix, _accuracy(sequences),
    )  # fmt: skip


def _accuracy(sequences: list[TrainSequence]) -> float:
    return float(np.mean([q.correct for q in sequences])) if sequences else 0.0


def _metric_key(loss_key: str) -> str:
    """Loss-side names -> run-log names: loss_pg -> loss/pg, trust_frac -> train/trust_fraction."""
    if loss_key.startswith("loss_"):
        return "loss/" + loss_key.removeprefix("loss_")
    return "train/" + {"trust_frac": "trust_fraction"}.get(loss_key, loss_key)


def step_metrics(batch: StepBatch, update: UpdateResult, seconds: float) -> dict[str, float]:
    tokens = sum(q.response_len for q in batch.sequences)
    return {
        **{_metric_key(k): v for k, v in update.metrics.items()},
        "train/grad_norm": update.grad_norm,
        "train/skipped": 0.0 if update.applied else 1.0,
        "train/accuracy": batch.train_accuracy,
        "train/guidance_prefix_len": batch.mean_prefix_len,
        "train/response_tokens": float(tokens),
        "perf/tokens_per_s": tokens / max(seconds, 1e-9),
        "perf/step_s": seconds,
        "perf/rollout_s": batch.rollout_seconds,
        "perf/teacher_s": batch.teacher_seconds,
        "perf/teacher_queue_s": batch.teacher_queue_seconds,
        "perf/teacher_compute_s": batch.teacher_compute_seconds,
    }


def progress_bar(cfg: RunConfig, start_step: int) -> tqdm:
    return tqdm(
        total=cfg.train.steps,
        initial=start_step,
        desc=cfg.name,
        unit="step",
        disable=not cfg.train.progress,
        dynamic_ncols=True,
    )


def advance(bar: tqdm, metrics: dict[str, float]) -> None:
    shown = {
        "acc": metrics.get("train/accuracy"),
        "trust": metrics.get("train/trust_fraction"),
        "gnorm": metrics.get("train/grad_norm"),
        "tok/s": metrics.get("perf/tokens_per_s"),
    }
    bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)
    bar.update(1)
