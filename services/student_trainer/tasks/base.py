"""The task abstraction the trainer samples from and scores with; text in, text out.

A task knows nothing about models or tokenizers. The trainer tokenizes `Example.prompt` with the
model's own tokenizer (`tokenizer(prompt)["input_ids"]`, so that tokenizer's special-token
handling applies, e.g. a prepended bos) and hands `verify` the decoded completion
(`tokenizer.decode(generated_ids, skip_special_tokens=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class TaskError(ValueError):
    """A task cannot be built or loaded; the message names the file, line, field or value."""


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt: the text given to the model, before any special tokens its tokenizer adds.
    answer: the reference: a final answer or a whole reference completion, depending on the
        task's verifier (the built-in addition task stores the final answer only).
    """

    prompt: str
    answer: str


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    name: a short label for logs and result files.
    max_new_tokens: enough new tokens for a full correct completion, eos included.
    """

    name: str
    max_new_tokens: int

    def train_examples(self) -> Sequence[Example]:
        """The prompt pool the trainer samples from (fixed for a given task config)."""
        ...

    def eval_examples(self) -> Sequence[Example]:
        """The fixed held-out set, disjoint from the train pool where the task can ensure it."""
        ...

    def verify(self, example: Example, completion: str) -> bool:
        """Whether `completion` (decoded, special tokens skipped) solves `example`."""
        ...
