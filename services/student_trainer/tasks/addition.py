"""The built-in task: N-digit addition with the carries spelled out (the built-in world's task).

Every number is written least-significant digit first, zero-padded to a fixed width, so every
sequence of a given digit count has the same length. For 1234 + 5678 = 6912 with 4 digits:

    prompt   "4321+8765="
    teacher  "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;21960"
    habit    "4+8+0=12.3+7+1=11.2+6+1=09.1+5+0=06;21960"   the student's habit: "." between steps
    hard     "0+4+8=12.1+3+7=11.1+2+6=09.0+1+5=06;21960"   "." and the carry in written first

Step i spells out digit i of a, digit i of b and the carry in, then their two-digit total
(carry out, then the sum digit); spelling the operand digits out keeps every step local, which
is what lets a 2-layer model learn the task in a few hundred steps. After the `;` comes the
(N+1)-digit sum, LSD first. The "hard" style leads each step with the carry in, a notation the
teacher never produces, so teacher and student disagree at the start of every step, not only at
the separators. (Writing the total sum-digit first was tried for "hard" and rejected: a 2 x 64
model could not learn it in 450 steps, which makes a dead student, not a hard one.)

A completion is correct iff it is well-formed (N steps "d+d+d=dd" joined by "," or ".", then
";", then N+1 digits, nothing else) and its final answer is the right sum. The steps' content
and which separator is used are not checked: the styles differ in style only, so a student can
be right in any of them (a mix of separators included), and a distillation method is scored on
answers, not on copying the teacher's punctuation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tropd.trainer.tasks.base import Example, Response

ANSWER_MARKER = ";"
# Every character a prompt or completion of any style can contain; the world's tokenizer
# gives each its own token.
SYMBOLS = "0123456789+=;,."


@dataclass(frozen=True)
class Style:
    """How the steps of a completion are written; the answer part is the same in every style."""

    name: str
    separator: str
    carry_in_first: bool  # step = carry in + a_i + b_i (instead of a_i + b_i + carry in)


TEACHER = Style("teacher", ",", carry_in_first=False)
HABIT = Style("habit", ".", carry_in_first=False)
HARD = Style("hard", ".", carry_in_first=True)
STYLES: dict[str, Style] = {s.name: s for s in (TEACHER, HABIT, HARD)}
_SEPARATORS = re.escape("".join(sorted({s.separator for s in STYLES.values()})))


@dataclass(frozen=True)
class Problem:
    a: int
    b: int


class AdditionConfig(BaseModel):
    """Options of the addition task; `load_task("addition", **options)` validates these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digits: int = Field(4, ge=1, le=64, description="digits per operand")
    seed: int = Field(0, description="seed of the train and eval problem pools")
    train_size: int = Field(20_000, ge=1, description="problems in the train pool")
    eval_size: int = Field(256, ge=1, description="problems in the held-out eval set")

    @model_validator(mode="after")
    def _pools_fit(self) -> AdditionConfig:
        available = 10 ** (2 * self.digits)
        if self.train_size + self.eval_size > available:
            raise ValueError(
                f"train_size + eval_size = {self.train_size + self.eval_size} exceeds the "
                f"{available} distinct {self.digits}-digit problems"
            )
        return self


def _lsd_first(value: int, width: int) -> str:
    return str(value).zfill(width)[::-1]


def prompt_text(problem: Problem, digits: int) -> str:
    return f"{_lsd_first(problem.a, digits)}+{_lsd_first(problem.b, digits)}="


def answer_text(problem: Problem, digits: int) -> str:
    return _lsd_first(problem.a + problem.b, digits + 1)


def completion_text(problem: Problem, digits: int, style: Style) -> str:
    """The full reference completion (without eos) of `problem` in `style`."""
    a, b = _lsd_first(problem.a, digits), _lsd_first(problem.b, digits)
    steps, carry_in = [], 0
    for da, db in zip(a, b, strict=True):
        total = int(da) + int(db) + carry_in
        digit, carry = total % 10, total // 10
        terms = f"{carry_in}+{da}+{db}" if style.carry_in_first else f"{da}+{db}+{carry_in}"
        steps.append(f"{terms}={carry}{digit}")
        carry_in = carry
    return style.separator.join(steps) + ANSWER_MARKER + answer_text(problem, digits)


def completion_length(digits: int) -> int:
    """Characters (= tokens) of a completion in any style, eos excluded."""
    return len("d+d+d=dd") * digits + (digits - 1) + 1 + (digits + 1)


def parse_problem(prompt: str, digits: int) -> Problem:
    match = re.fullmatch(rf"(\d{{{digits}}})\+(\d{{{digits}}})=", prompt)
    if match is None:
        raise ValueError(f"not a {digits}-digit addition prompt: {prompt!r}")
    return Problem(int(match.group(1)[::-1]), int(match.group(2)[::-1]))


def _draw_unique(rng: random.Random, count: int, digits: int, taken: set[Problem]) -> list[Problem]:
    limit, drawn = 10**digits, list[Problem]()
    while len(drawn) < count:
        problem = Problem(rng.randrange(limit), rng.randrange(limit))
        if problem not in taken:
            taken.add(problem)
            drawn.append(problem)
    return drawn


class AdditionTask:
    """N-digit addition; deterministic, disjoint train and eval pools drawn from `seed`."""

    def __init__(self, config: AdditionConfig | None = None) -> None:
        self.config = config or AdditionConfig()
        self.digits = self.config.digits
        self.name = f"addition{self.digits}"
        self.max_new_tokens = completion_length(self.digits) + 1  # + eos
        step = r"\d\+\d\+\d=\d\d"
        steps = rf"{step}(?:[{_SEPARATORS}]{step}){{{self.digits - 1}}}"
        self._grammar = re.compile(rf"{steps}{ANSWER_MARKER}(?P<answer>\d{{{self.digits + 1}}})")

    @cached_property
    def _pools(self) -> tuple[list[Problem], list[Problem]]:
        # Eval is drawn first so that changing train_size never changes the eval set.
        rng, taken = random.Random(self.config.seed), set[Problem]()
        eval_problems = _draw_unique(rng, self.config.eval_size, self.digits, taken)
        train_problems = _draw_unique(rng, self.config.train_size, self.digits, taken)
        return train_problems, eval_problems

    def train_problems(self) -> Sequence[Problem]:
        return self._pools[0]

    def eval_problems(self) -> Sequence[Problem]:
        return self._pools[1]

    def example(self, problem: Problem) -> Example:
        return Example(prompt_text(problem, self.digits), answer_text(problem, self.digits))

    @cached_property
    def _train_examples(self) -> list[Example]:
        return [self.example(p) for p in self.train_problems()]

    @cached_property
    def _eval_examples(self) -> list[Example]:
        return [self.example(p) for p in self.eval_problems()]

    def train_examples(self) -> Sequence[Example]:
        return self._train_examples

    def eval_examples(self) -> Sequence[Example]:
        return self._eval_examples

    def final_answer(self, completion: str) -> str | None:
        """The answer of a well-formed completion (any style), None when malformed."""
        match = self._grammar.fullmatch(completion.strip())
        return None if match is None else match.group("answer")

    def verify(self, example: Example, response: Response) -> bool:
        return self.final_answer(response.text) == example.answer

    def reference_completion(self, example: Example, style: Style = TEACHER) -> str:
        """The correct completion of `example` in `style` (eos excluded)."""
        return completion_text(parse_problem(example.prompt, self.digits), self.digits, style)
