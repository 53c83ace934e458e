"""The prompt sampler: epochs visit every example once, reshuffled per epoch from the seed; its
position survives a checkpoint; `replacement` is the sampler the built-in recipes measured."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tropd.trainer.errors import SetupError
from tropd.trainer.sampler import PromptSampler


def test_an_epoch_visits_every_prompt_once_then_reshuffles() -> None:
    sampler = PromptSampler(10, seed=3)
    steps = [sampler.draw(4) for _ in range(5)]  # 20 draws = two epochs, steps straddle them
    flat = [i for step in steps for i in step]
    first, second = flat[:10], flat[10:]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # reshuffled
    assert flat == [i for step in [PromptSampler(10, seed=3).draw(20)] for i in step]
    assert PromptSampler(10, seed=4).draw(10) != first  # the seed picks the order


def test_resume_continues_the_same_order() -> None:
    straight = PromptSampler(7, seed=1)
    expected = [straight.draw(3) for _ in range(6)]
    first = PromptSampler(7, seed=1)
    head = [first.draw(3) for _ in range(2)]
    state = json.loads(json.dumps(first.state()))  # as the checkpoint stores it
    resumed = PromptSampler(7, seed=1)
    resumed.restore(state)
    assert head + [resumed.draw(3) for _ in range(4)] == expected


def test_replacement_draws_as_before_and_resumes() -> None:
    sampler = PromptSampler(20_000, seed=0, mode="replacement")
    old = np.random.default_rng(0)  # what the loop drew before epochs existed
    assert sampler.draw(32) == old.choice(20_000, size=32, replace=True).tolist()
    state = json.loads(json.dumps(sampler.state()))
    resumed = PromptSampler(20_000, seed=0, mode="replacement")
    resumed.restore(state)
    assert resumed.draw(32) == sampler.draw(32)
    legacy = {"numpy_bit_generator": state["numpy_bit_generator"]}  # an older checkpoint
    PromptSampler(20_000, seed=0, mode="replacement").restore(legacy)


def test_a_checkpoint_of_other_data_or_mode_is_refused() -> None:
    state = PromptSampler(8, seed=0).state()
    with pytest.raises(SetupError, match="for 8 train examples, the task now has 9"):
        PromptSampler(9, seed=0).restore(state)
    with pytest.raises(SetupError, match="task.sampling=epochs"):
        PromptSampler(8, seed=0, mode="replacement").restore(state)
