"""Task accuracy: the student greedy in-process, the teacher greedy through the service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tropd.teacher.client import TeacherClient
from tropd.trainer.rollout import eos_ids_of, sample_completions
from tropd.trainer.tasks.base import Example, Task


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    num_examples: int
    samples: tuple[tuple[str, str, bool], ...]  # a few (prompt, completion, correct) for the log


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> list[list[int]]:
    """Prompt ids exactly as any HF model sees them (the tokenizer adds its own special tokens)."""
    return [list(tokenizer(ex.prompt)["input_ids"]) for ex in examples]


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: np.ndarray) -> str:
    """The text of one id sequence, special tokens dropped (what a task's verifier reads)."""
    return cast(str, tokenizer.decode(ids.tolist(), skip_special_tokens=True))


def _score(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    outputs: list[np.ndarray],
) -> EvalResult:
    verdicts = []
    samples: list[tuple[str, str, bool]] = []
    for ex, ids in zip(examples, outputs, strict=True):
        text = decode_text(tokenizer, ids)
        ok = task.verify(ex, text)
        verdicts.append(ok)
        if len(samples) < 4:
            samples.append((ex.prompt, text, ok))
    return EvalResult(float(np.mean(verdicts)), len(verdicts), tuple(samples))


def evaluate_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 256,
) -> EvalResult:
    """Greedy-decode every example with the student and verify it (callers wrap the call in
    the student's autocast)."""
    prompts = encode_prompts(tokenizer, examples)
    completions = sample_completions(
        model,
        prompts,
        samples_per_context=1,
        max_new_tokens=task.max_new_tokens,
        eos_ids=eos_ids_of(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        greedy=True,
        batch_size=batch_size,
    )
    return _score(task, tokenizer, examples, [c.ids for c in completions])


def evaluate_teacher(
    client: TeacherClient,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 64,
) -> EvalResult:
    """Greedy-decode every example with the teacher service (Generate, temperature 0)."""
    prompts = encode_prompts(tokenizer, examples)
    outputs: list[np.ndarray] = []
    for lo in range(0, len(prompts), batch_size):
        results = client.generate(
            prompts[lo : lo + batch_size],
            max_new_tokens=task.max_new_tokens,
            temperature=0.0,
            stop_ids=(tokenizer.eos_token_id,),
        )
        outputs.extend(np.asarray(r.ids) for r in results)
    return _score(task, tokenizer, examples, outputs)
