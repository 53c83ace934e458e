"""The built-in addition task: formats, the verifier, the pools and the registry."""

from __future__ import annotations

import pytest

from tropd.trainer.tasks import Task, TaskError, load_task
from tropd.trainer.tasks.addition import (
    HABIT,
    HARD,
    STYLES,
    TEACHER,
    AdditionConfig,
    AdditionTask,
    Problem,
    completion_length,
    completion_text,
    parse_problem,
    prompt_text,
)
from tropd.trainer.tasks.base import Example, Response

# 1234 + 5678 = 6912; every number least-significant digit first.
PROBLEM = Problem(1234, 5678)
EXAMPLE = Example("4321+8765=", "21960")


def test_formats_written_out_by_hand() -> None:
    assert prompt_text(PROBLEM, 4) == EXAMPLE.prompt
    assert completion_text(PROBLEM, 4, TEACHER) == "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;21960"
    assert completion_text(PROBLEM, 4, HABIT) == "4+8+0=12.3+7+1=11.2+6+1=09.1+5+0=06;21960"
    assert completion_text(PROBLEM, 4, HARD) == "0+4+8=12.1+3+7=11.1+2+6=09.0+1+5=06;21960"
    assert parse_problem(EXAMPLE.prompt, 4) == PROBLEM


@pytest.mark.parametrize("digits", [1, 4, 12])
def test_every_sequence_of_a_digit_count_has_one_length(digits: int) -> None:
    task = AdditionTask(AdditionConfig(digits=digits, train_size=50, eval_size=20))
    lengths = {
        (len(e.prompt), len(task.reference_completion(e, style)))
        for e in [*task.train_examples(), *task.eval_examples()]
        for style in STYLES.values()
    }
    assert lengths == {(2 * digits + 2, completion_length(digits))}
    assert task.max_new_tokens == completion_length(digits) + 1  # + eos


def test_carry_out_of_the_top_digit_lands_in_the_answer() -> None:
    assert completion_text(Problem(9999, 1), 4, TEACHER) == (
        "9+1+0=10,9+0+1=10,9+0+1=10,9+0+1=10;00001"
    )


@pytest.mark.parametrize(
    "completion",
    [
        "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;21960",  # teacher style
        "4+8+0=12.3+7+1=11.2+6+1=09.1+5+0=06;21960",  # habit style
        "0+4+8=12.1+3+7=11.1+2+6=09.0+1+5=06;21960",  # hard style
        "4+8+0=12.3+7+1=11,2+6+1=09.1+5+0=06;21960",  # separators mixed: style only
        "9+9+9=99,9+9+9=99,9+9+9=99,9+9+9=99;21960",  # wrong steps, right answer: still correct
        "  4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;21960\n",  # surrounding whitespace
    ],
)
def test_verifier_accepts_right_answers_in_any_style(completion: str) -> None:
    assert AdditionTask().verify(EXAMPLE, Response(completion))


@pytest.mark.parametrize(
    "completion",
    [
        "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;21961",  # wrong answer
        "4+8+0=12.3+7+1=11.2+6+1=09.1+5+0=06;31960",  # wrong answer, habit style
        "4+8+0=12,3+7+1=11,2+6+1=09;21960",  # a step missing
        "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;2196",  # answer too short
        "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06;219600",  # trailing digit (no eos in time)
        "4+8+0=12;3+7+1=11,2+6+1=09,1+5+0=06;21960",  # ";" as a step separator
        "4+8+0=12,,3+7+1=11,2+6+1=09,1+5+0=06;21960",  # doubled separator
        "4+8+0=12 3+7+1=11 2+6+1=09 1+5+0=06;21960",  # unknown separator
        "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,21960",  # no answer marker
        "21960",  # answer only
        "",
    ],
)
def test_verifier_rejects_wrong_or_malformed(completion: str) -> None:
    assert not AdditionTask().verify(EXAMPLE, Response(completion))


def test_pools_are_deterministic_disjoint_and_seeded() -> None:
    config = AdditionConfig(train_size=2000, eval_size=256)
    first, second = AdditionTask(config), AdditionTask(config)
    assert first.train_examples() == second.train_examples()
    assert first.eval_examples() == second.eval_examples()
    assert len(first.eval_examples()) == 256 and len(first.train_examples()) == 2000
    eval_prompts = {e.prompt for e in first.eval_examples()}
    train_prompts = {e.prompt for e in first.train_examples()}
    assert len(eval_prompts) == 256 and len(train_prompts) == 2000
    assert not eval_prompts & train_prompts
    other_seed = AdditionTask(AdditionConfig(seed=1, train_size=2000, eval_size=256))
    assert other_seed.eval_examples() != first.eval_examples()
    # The eval set does not move when the train pool is resized.
    bigger = AdditionTask(AdditionConfig(train_size=3000, eval_size=256))
    assert bigger.eval_examples() == first.eval_examples()


def test_reference_completions_verify() -> None:
    task = AdditionTask(AdditionConfig(train_size=10, eval_size=50))
    for example in task.eval_examples():
        for style in STYLES.values():
            assert task.verify(example, Response(task.reference_completion(example, style)))


def test_registry_builds_tasks_and_rejects_bad_options() -> None:
    task = load_task("addition", digits=3, train_size=10, eval_size=5)
    assert isinstance(task, Task) and task.name == "addition3"
    assert load_task({"name": "addition", "digits": 3, "train_size": 10, "eval_size": 5}).name == (
        "addition3"
    )
    with pytest.raises(TaskError, match="unknown task 'additon'"):
        load_task("additon")
    with pytest.raises(TaskError, match="digit: Extra inputs are not permitted"):
        load_task("addition", digit=3)
    with pytest.raises(TaskError, match="exceeds the 100 distinct 1-digit problems"):
        load_task("addition", digits=1)
    with pytest.raises(TaskError, match="no 'name'"):
        load_task({"digits": 3})
