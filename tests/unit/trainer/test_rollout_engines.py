"""Rollout engines: both report the one behaviour log-prob (the untempered student's, float32)
that an independent teacher-forced forward of the same ids gives, at temperature 1 and below,
on the built-in student and on a Qwen3-architecture student with the real 151,936-token
vocabulary and an instruct model's sampling knobs; every row comes back once, in groups as it
finishes; both stop at the model's last position; a seeded paged rollout repeats; an unknown
engine is a config error naming the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from tropd.errors import ConfigError
from tropd.trainer.config import RolloutConfig, load_config
from tropd.trainer.rollout import Completion, max_positions, roll_out
from tropd.trainer.rollout_engines import make_engine
from tropd.trainer.world import builtin_world_dir

ENGINES = ("generate", "paged")


def _student() -> tuple[torch.nn.Module, list[list[int]], int, int]:
    folder = builtin_world_dir() / "student"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("1136+0986=")["input_ids"]
    contexts = [prompt] + [
        prompt + tokenizer.encode(prefix, add_special_tokens=False)
        for prefix in ("1+0+0=01,", "1+0+0=01,1+9+0=10,")
    ]  # three widths
    return model, contexts, tokenizer.eos_token_id, tokenizer.pad_token_id


def _qwen3_real_vocab() -> torch.nn.Module:
    config = Qwen3Config(
        vocab_size=151_936, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    # An instruct model's shipped knobs: every engine samples the raw student anyway.
    model.generation_config.update(do_sample=True, temperature=0.6, top_k=20, top_p=0.8,
                                   repetition_penalty=1.3, min_p=0.1)  # fmt: skip
    return model


def _teacher_forced(model: torch.nn.Module, context: list[int], ids: np.ndarray) -> torch.Tensor:
    """Independent reference: the whole row's logits, float32 log-softmax, gather."""
    with torch.no_grad():
        logits_T_V = model(torch.tensor([context + ids.tolist()])).logits[0].float()
    rows_T_V = torch.log_softmax(logits_T_V, dim=-1)[len(context) - 1 : len(context) - 1 + ids.size]
    return rows_T_V.gather(-1, torch.as_tensor(ids)[:, None])[:, 0]


def _sample(
    engine: str, model: torch.nn.Module, contexts: list[list[int]], samples: int, tokens: int,
    eos: list[int], pad: int, **kw: object,
) -> list[list[Completion]]:  # fmt: skip
    cfg = RolloutConfig(engine=engine)  # type: ignore[arg-type]
    return list(make_engine(cfg).sample(model, contexts, samples, tokens, eos, pad, **kw))  # type: ignore[arg-type]


def _check_against_teacher_forced(model: torch.nn.Module, contexts: list[list[int]],
                                  completions: list[Completion]) -> None:  # fmt: skip
    for c in completions:
        expected = _teacher_forced(model, contexts[c.context_index], c.ids)
        torch.testing.assert_close(torch.as_tensor(c.behavior_logprobs), expected, atol=1e-4,
                                   rtol=0)  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_are_the_untempered_teacher_forced_ones(
    engine: str, temperature: float
) -> None:
    model, contexts, eos, pad = _student()
    model.train()
    torch.manual_seed(0)
    groups = _sample(engine, model, contexts, 4, 40, [eos], pad, temperature=temperature)
    assert model.training  # restored (sampled in eval mode)
    model.eval()
    completions = [c for g in groups for c in g]
    assert sorted(c.row for c in completions) == list(range(12))  # every row, once
    assert all(c.context_index == c.row // 4 for c in completions)
    assert {c.finish_reason for c in completions} == {"eos", "length"}
    for c in completions:
        assert (c.ids[-1] == eos) == (c.finish_reason == "eos")
        assert c.ids.size <= 40  # or fewer: the model's positions end first
        assert c.behavior_logprobs.dtype == np.float32 and c.behavior_logprobs.size == c.ids.size
    _check_against_teacher_forced(model, contexts, completions)


@pytest.mark.parametrize("engine", ENGINES)
def test_real_vocabulary_qwen3_student_samples_the_raw_distribution(engine: str) -> None:
    model = _qwen3_real_vocab()
    contexts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    torch.manual_seed(0)
    groups = _sample(engine, model, contexts, 3, 12, [151_645, 151_643], 0, batch_size=4)
    completions = [c for g in groups for c in g]
    assert len(completions) == 6
    # top_k=20 of a 152k vocabulary would make every sampled token one of 20 near-ties; the raw
    # student at temperature 1 (near-uniform when random) samples far below them.
    assert min(float(c.behavior_logprobs.min()) for c in completions) < -11
    _check_against_teacher_forced(model, contexts, completions)


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_stop_at_the_models_last_position(engine: str) -> None:
    model, contexts, eos, pad = _student()
    limit = max_positions(model)  # GPT-2's learned table: one position past it is an IndexError
    assert limit == model.config.n_positions == 64
    long = contexts[-1] * 3
    near = [long[: limit - 3]]  # room for three new tokens
    torch.manual_seed(0)
    completions = [c for g in _sample(engine, model, near, 4, 40, [eos], pad) for c in g]
    assert all(c.ids.size <= 3 for c in completions)
    assert any(c.ids.size == 3 and c.finish_reason == "length" for c in completions)
    with pytest.raises(ValueError, match=f"no room in the model's {limit} positions"):
        _sample(engine, model, [long[:limit]], 1, 40, [eos], pad)


def test_paged_rows_come_back_in_groups_and_a_seeded_run_repeats() -> None:
    model, contexts, eos, pad = _student()
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(_sample("paged", model, contexts * 8, 2, 30, [eos], pad, temperature=0.7))
    first, second = runs
    assert len(first) > 1  # 48 rows: several groups, handed back before the last row ends
    assert [[c.row for c in g] for g in first] == [[c.row for c in g] for g in second]
    for a, b in zip([c for g in first for c in g], [c for g in second for c in g], strict=True):
        assert np.array_equal(a.ids, b.ids)


def test_roll_out_orders_rows_by_prompt_whatever_the_finish_order() -> None:
    model, contexts, eos, pad = _student()
    prompts, prefixes = contexts[:1] * 20, [np.zeros(0, np.int64)] * 20
    cfg = RolloutConfig(engine="paged", samples_per_prompt=2, temperature=1.0)
    seen: list[int] = []
    torch.manual_seed(1)
    sequences = roll_out(make_engine(cfg), model, prompts, prefixes, cfg, 30, [eos], pad,
                         on_finished=lambda rows: seen.extend(r for r, _ in rows))  # fmt: skip
    assert sorted(seen) == list(range(40)) and seen != sorted(seen)  # finished out of order
    assert [q.prompt_index for q in sequences] == [i // 2 for i in range(40)]


def test_unknown_engine_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(None, ["rollout.engine=vllm"])
    bogus = RolloutConfig.model_construct(engine="vllm")
    with pytest.raises(ConfigError, match="rollout.engine"):
        make_engine(bogus)


def test_paged_with_a_loss_reading_the_students_top_k_is_refused() -> None:
    with pytest.raises(ConfigError, match="only rollout.engine=generate records"):
        load_config(None, ["rollout.engine=paged", "loss.method=rkl_topk"])
    load_config(None, ["rollout.engine=generate", "loss.method=rkl_topk"])  # the pairing that works
