"""Rollouts: behaviour log-probs gathered per sampled token equal a teacher-forced forward of each
row alone (left padding and batching do not leak into `lp_S_old`), equal bit for bit what the
old keep-every-logit path (`output_logits=True`) recorded, rows stop at any eos id with the
reason recorded, and a real-vocabulary student rolls out in bounded batches."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from tropd.trainer.rollout import _left_pad, sample_completions
from tropd.trainer.world import builtin_world_dir


def _student() -> tuple[torch.nn.Module, object, list[list[int]]]:
    folder = builtin_world_dir() / "student"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("1136+0986=")["input_ids"]
    contexts = [prompt] + [
        prompt + tokenizer.encode(prefix, add_special_tokens=False)
        for prefix in ("1+0+0=01,", "1+0+0=01,1+9+0=10,")
    ]  # three widths: two rows of each call are left-padded
    return model, tokenizer, contexts


def _teacher_forced(model: torch.nn.Module, context: list[int], ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        logits_T_V = model(torch.tensor([context + ids.tolist()])).logits[0].float()
    rows_T_V = torch.log_softmax(logits_T_V, dim=-1)[len(context) - 1 : len(context) - 1 + ids.size]
    return rows_T_V.gather(-1, torch.as_tensor(ids)[:, None])[:, 0]


def test_left_padded_rows_get_their_unpadded_logprobs() -> None:
    model, tokenizer, contexts = _student()
    torch.manual_seed(0)
    completions = sample_completions(
        model, contexts, 2, 60, [tokenizer.eos_token_id], tokenizer.pad_token_id, batch_size=4
    )
    assert len(completions) == 6
    assert [c.context_index for c in completions] == [0, 0, 1, 1, 2, 2]
    assert any(c.finish_reason == "eos" for c in completions)  # some rows finished
    for c in completions:
        assert (c.ids[-1] == tokenizer.eos_token_id) == (c.finish_reason == "eos")
        expected = _teacher_forced(model, contexts[c.context_index], c.ids)
        torch.testing.assert_close(torch.as_tensor(c.behavior_logprobs), expected, atol=1e-5,
                                   rtol=0)  # fmt: skip


def test_float32_samples_and_logprobs_are_bitwise_the_stored_logits_path() -> None:
    """The demo's float32 numbers depend on this: same RNG use, same arithmetic."""
    model, tokenizer, contexts = _student()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(3)
    ids_B_L, mask_B_L = _left_pad(contexts, pad)
    out = model.generate(input_ids=ids_B_L, attention_mask=mask_B_L, do_sample=True,
                         num_return_sequences=4, max_new_tokens=30, eos_token_id=eos,
                         pad_token_id=pad, output_logits=True, return_dict_in_generate=True,
                         temperature=0.7, top_k=0, top_p=1.0)  # fmt: skip
    new_B_N = out.sequences[:, ids_B_L.shape[1] :]
    logprobs_B_N_V = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
    logprobs_B_N = logprobs_B_N_V.gather(-1, new_B_N[..., None])[..., 0]
    torch.manual_seed(3)
    completions = sample_completions(model, contexts, 4, 30, [eos], pad, temperature=0.7)
    for row, c in enumerate(completions):
        assert np.array_equal(c.ids, new_B_N[row, : c.ids.size].numpy())
        assert np.array_equal(c.behavior_logprobs, logprobs_B_N[row, : c.ids.size].numpy())


def test_stops_at_any_eos_id_and_batches_do_not_change_greedy_rows() -> None:
    model, tokenizer, contexts = _student()
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    greedy = sample_completions(model, contexts, 1, 30, [tokenizer.eos_token_id],
                                tokenizer.pad_token_id, greedy=True)  # fmt: skip
    one_by_one = sample_completions(model, contexts, 1, 30, [tokenizer.eos_token_id],
                                    tokenizer.pad_token_id, greedy=True, batch_size=1)  # fmt: skip
    for a, b in zip(greedy, one_by_one, strict=True):
        assert np.array_equal(a.ids, b.ids)
    stopped = sample_completions(model, contexts, 1, 30, [tokenizer.eos_token_id, *digits],
                                 tokenizer.pad_token_id, greedy=True)  # fmt: skip
    for full, c in zip(greedy, stopped, strict=True):
        first = int(np.flatnonzero(np.isin(full.ids, digits))[0])
        assert np.array_equal(c.ids, full.ids[: first + 1])  # cut at the first digit, kept
        assert c.finish_reason == "eos"
    capped = sample_completions(model, contexts, 1, 2, [tokenizer.eos_token_id],
                                tokenizer.pad_token_id, greedy=True)  # fmt: skip
    assert all(c.ids.size == 2 and c.finish_reason == "length" for c in capped)


def test_real_vocabulary_student_rolls_out_in_batches() -> None:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151_936, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    # An instruct model's shipped sampling knobs: the rollout samples the raw student anyway.
    model.generation_config.update(do_sample=True, temperature=0.6, top_k=20, top_p=0.8,
                                   repetition_penalty=1.3, min_p=0.1)  # fmt: skip
    contexts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    completions = sample_completions(model, contexts, 3, 12, (151_645, 151_643), 0,
                                     batch_size=4)  # fmt: skip
    assert len(completions) == 6
    # top_k=20 of a 152k vocabulary would make every sampled token one of 20 near-ties; the raw
    # student at temperature 1 (near-uniform when random) samples far below them.
    assert min(float(c.behavior_logprobs.min()) for c in completions) < -11
    for c in completions:
        expected = _teacher_forced(model, contexts[c.context_index], c.ids)
        torch.testing.assert_close(torch.as_tensor(c.behavior_logprobs), expected, atol=1e-5,
                                   rtol=0)  # fmt: skip
