"""Task accuracy: the student greedy in-process, the teacher greedy through the service."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel

from tropd.teacher.client import TeacherClient
from tropd.trainer.prompts import PromptCodec
from tropd.trainer.rollout import sample_completions
from tropd.trainer.tasks.base import Example, Response, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One verified example, for the log: what the verifier read and what it said."""

    prompt: str
    response: Response
    correct: bool

    def describe(self) -> str:
        verdict = "ok" if self.correct else "wrong"
        return (f"{self.prompt!r} -> {self.response.text!r} "
                f"[{verdict}, stopped by {self.response.finish_reason}]")  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    num_examples: int
    samples: tuple[Sample, ...]  # the first few, for the log


def score_responses(
    task: Task, examples: Sequence[Example], responses: Sequence[Response], keep: int = 4
) -> EvalResult:
    """Verify each response against its example; keep the first `keep` as samples."""
    verdicts = [task.verify(ex, r) for ex, r in zip(examples, responses, strict=True)]
    samples = tuple(
        Sample(ex.prompt, r, ok) for ex, r, ok in zip(examples, responses, verdicts, strict=True)
    )[:keep]
    return EvalResult(float(np.mean(verdicts)), len(verdicts), samples)


def evaluate_student(
    model: PreTrainedModel,
    codec: PromptCodec,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 256,
) -> EvalResult:
    """Greedy-decode every example with the student and verify it (callers wrap the call in
    the student's autocast)."""
    completions = sample_completions(
        model,
        codec.encode(examples),
        samples_per_context=1,
        max_new_tokens=max_new_tokens,
        eos_ids=codec.eos_ids,
        pad_id=codec.tokenizer.pad_token_id,
        greedy=True,
        batch_size=batch_size,
    )
    responses = [codec.response(c.ids, c.finish_reason) for c in completions]
    return score_responses(task, examples, responses)


def evaluate_teacher(
    client: TeacherClient,
    codec: PromptCodec,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 64,
) -> EvalResult:
    """Greedy-decode every example with the teacher service (Generate, temperature 0)."""
    prompts = codec.encode(examples)
    responses: list[Response] = []
    for lo in range(0, len(prompts), batch_size):
        results = client.generate(
            prompts[lo : lo + batch_size],
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            stop_ids=codec.eos_ids,
        )
        responses.extend(codec.response(np.asarray(r.ids)) for r in results)
    return score_responses(task, examples, responses)


def report_start(result: EvalResult) -> None:
    """The step-0 accuracy with three examples of what the verifier read; loud at 0, which
    usually means a verifier that cannot read the answers, not a hopeless student."""
    log.info("start accuracy %.3f on %d eval examples; what the verifier read:", result.accuracy,
             result.num_examples)  # fmt: skip
    for sample in result.samples[:3]:
        log.info("  %s", sample.describe())
    if result.accuracy == 0:
        log.warning(
            "START ACCURACY IS 0: the verifier accepted none of %d greedy answers. Check the "
            "examples above: the verifier and its marker (task.options.verifier, marker), the "
            "answers' format, the chat template, and whether responses stop by length "
            "(rollout.max_new_tokens). Training on a verifier that never matches still runs, "
            "but its accuracy says nothing",
            result.num_examples,
        )
