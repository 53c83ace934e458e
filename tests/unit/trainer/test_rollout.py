"""Rollouts of contexts of different lengths (left-padded in one `generate` call) record the
same behaviour log-probs as a teacher-forced forward of each row alone, unpadded: the trust
test's `lp_S_old` does not depend on what else was sampled in the batch."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.trainer.rollout import sample_completions
from tropd.trainer.world import builtin_world_dir


def test_left_padded_rows_get_their_unpadded_logprobs() -> None:
    folder = builtin_world_dir() / "student"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("1136+0986=")["input_ids"]
    contexts = [prompt] + [
        prompt + tokenizer.encode(prefix, add_special_tokens=False)
        for prefix in ("1+0+0=01,", "1+0+0=01,1+9+0=10,")
    ]  # three widths: two rows of each call are left-padded
    torch.manual_seed(0)
    completions = sample_completions(
        model, contexts, 2, 60, [tokenizer.eos_token_id], tokenizer.pad_token_id
    )
    assert len(completions) == 6
    assert any(c.ids[-1] == tokenizer.eos_token_id for c in completions)  # some rows finished
    for c in completions:
        context = contexts[c.context_index]
        ids = torch.tensor([context + c.ids.tolist()])
        with torch.no_grad():
            logprobs_T_V = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        rows = logprobs_T_V[len(context) - 1 : len(context) - 1 + c.ids.size]
        expected = rows.gather(-1, torch.as_tensor(c.ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.as_tensor(c.behavior_logprobs), expected, atol=1e-5,
                                   rtol=0)  # fmt: skip
