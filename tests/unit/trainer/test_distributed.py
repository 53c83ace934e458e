"""The single-process side of `train.parallel`: shares of a step, seeds that do not depend on
which rank draws a prompt, refusals before any process group exists, and one process's Ranks
whose collectives hand back their input. The multi-process behaviour runs under real torchrun
in tests/integration/trainer/test_distributed.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.errors import ConfigError
from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import load_config
from tropd.trainer.distributed import Ranks, join, prompt_seeds, row_seeds
from tropd.trainer.errors import SetupError
from tropd.trainer.rollout import sample_completions
from tropd.trainer.update import _trust_uniforms
from tropd.trainer.world import builtin_world_dir


def test_one_process_collectives_return_their_input() -> None:
    ranks = Ranks.single()
    assert not ranks.distributed and ranks.is_main
    assert ranks.share(6) == slice(0, 6)
    assert ranks.sum(2.5) == 2.5 and ranks.max(3) == 3 and ranks.any(True)
    assert ranks.gather({"a": 1}) == [{"a": 1}]
    assert ranks.mean([True, False, True, True]) == 0.75 and ranks.mean([]) == 0.0
    with ranks.full_weights():
        pass


def test_ranks_take_disjoint_contiguous_shares_of_the_step() -> None:
    shares = [Ranks("ddp", r, 4).share(8) for r in range(4)]
    assert [list(range(8))[s] for s in shares] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(SetupError, match=r"rollout.prompts_per_step=6 .* 4 ranks"):
        Ranks("fsdp", 0, 4).share(6)


def test_seeds_follow_the_global_prompt_not_the_rank() -> None:
    whole = prompt_seeds(7, 3, slice(0, 4))
    assert prompt_seeds(7, 3, slice(2, 4)) == whole[2:]
    assert len(set(whole)) == 4
    assert prompt_seeds(7, 4, slice(0, 4)) != whole  # a new step, new seeds
    assert prompt_seeds(8, 3, slice(0, 4)) != whole  # a new run seed, new seeds
    assert set(row_seeds(7, 3, 0, 4)).isdisjoint(whole)  # trust uniforms: another stream
    assert row_seeds(7, 3, 4, 4) == row_seeds(7, 3, 0, 8)[4:]


def test_launch_refusals_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SetupError, match="train.parallel=ddp or fsdp"):
        join("none", "cpu", 10.0)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SetupError, match="runs under torchrun"):
        join("fsdp", "cpu", 10.0)
    assert not join("none", "cpu", 10.0).distributed


def test_config_refuses_unknown_parallel_and_fsdp_float16() -> None:
    with pytest.raises(ConfigError, match="train.parallel"):
        load_config(None, ["train.parallel=zero3"])
    with pytest.raises(ConfigError, match="float16"):
        load_config(None, ["train.parallel=fsdp", "student.compute_dtype=float16"])
    assert load_config(None, []).train.parallel == "none"


def test_seeded_contexts_sample_the_same_alone_or_with_neighbours() -> None:
    folder = builtin_world_dir() / "student"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [tokenizer(p)["input_ids"] for p in ("1136+0986=", "12+7=", "5000+5000=")]
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    seeds = prompt_seeds(0, 0, slice(0, 3))
    before = torch.get_rng_state()
    together = sample_completions(model, prompts, 3, 20, eos, pad, batch_size=2,
                                  context_seeds=seeds)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left as it was
    alone = sample_completions(model, prompts[2:], 3, 20, eos, pad, batch_size=2,
                               context_seeds=seeds[2:])  # fmt: skip
    for a, b in zip(together[6:], alone, strict=True):
        assert np.array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.behavior_logprobs, b.behavior_logprobs)
    assert len({tuple(c.ids) for c in together}) > 1  # they did sample


def _sequence(response_len: int) -> TrainSequence:
    return TrainSequence(prompt_index=0, context_len=2, ids=np.arange(2 + response_len),
                         prefix_len=0, behavior_logprobs=np.zeros(response_len, np.float32),
                         finish_reason="length")  # fmt: skip


def test_seeded_trust_uniforms_do_not_depend_on_the_neighbours() -> None:
    generator = torch.Generator().manual_seed(0)
    seeds = row_seeds(0, 1, 0, 3)
    wide = _trust_uniforms([_sequence(5), _sequence(9), _sequence(3)], generator, seeds)
    narrow = _trust_uniforms([_sequence(3)], generator, seeds[2:])
    assert torch.equal(wide[2, :3], narrow[0]) and (wide[2, 3:] == 0).all()
    unseeded = _trust_uniforms([_sequence(5)], torch.Generator().manual_seed(4), None)
    assert torch.equal(unseeded, torch.rand((1, 5), generator=torch.Generator().manual_seed(4)))


def test_nproc_without_a_parallel_mode_is_refused_before_torchrun(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tropd.trainer.cli import main

    assert main(["run", "--config", "configs/demo.yaml", "--nproc", "2"]) == 2
    assert "--nproc 2 needs train.parallel=ddp or fsdp" in capsys.readouterr().err
