"""The task abstraction the trainer samples from and scores with; text in, text out.

A task knows nothing about models or tokenizers. The trainer renders each `Example` into token
ids with the model's own tokenizer (`tropd.trainer.prompts`: the chat template when the
tokenizer has one, else `tokenizer(prompt)`), and hands `verify` a `Response`: what the model
wrote, as decoded text (special tokens skipped) and as ids, and why generation stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["eos", "length"]


class TaskError(ValueError):
    """A task cannot be built or loaded; the message names the file, line, field or value."""


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt: the user's text, before any chat template or special tokens (for a chat example,
        its last user turn; it also keys the guidance drafts file).
    answer: the reference: a final answer or a whole reference solution, depending on the
        task's verifier (the built-in addition task stores the final answer only).
    messages: a whole chat ({"role", "content"} turns) when the data set gives one; rendered
        with the chat template instead of `prompt`.
    system: this example's system prompt; None falls back to the task's default.
    id: the data set's id of the example, when it has one.
    fields: the record as loaded, every field (what a custom verifier may read besides these).
    """

    prompt: str
    answer: str
    messages: tuple[Mapping[str, str], ...] | None = None
    system: str | None = None
    id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Response:
    """What the model wrote for one example, as a verifier sees it.

    text: the decoded completion, special tokens skipped.
    ids: the completion's token ids as sampled, eos included when one was emitted (a guided
        rollout's ids start with the teacher-written prefix).
    finish_reason: "eos" (the model ended it) or "length" (it ran out of new tokens).
    """

    text: str
    ids: tuple[int, ...] = ()
    finish_reason: FinishReason = "eos"


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    name: a short label for logs and result files.
    max_new_tokens: the response budget when `rollout.max_new_tokens` is not set (the built-in
        task knows its exact answer length; data-set tasks use a generous default).
    """

    name: str
    max_new_tokens: int

    def train_examples(self) -> Sequence[Example]:
        """The prompt pool the trainer samples from (fixed for a given task config)."""
        ...

    def eval_examples(self) -> Sequence[Example]:
        """The fixed held-out set, disjoint from the train pool where the task can ensure it."""
        ...

    def verify(self, example: Example, response: Response) -> bool:
        """Whether `response` solves `example`."""
        ...
