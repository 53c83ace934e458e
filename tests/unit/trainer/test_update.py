"""`apply_update` on a real (built-in) student: the micro-batch split does not change the step.

The losses are tested against per-token references in test_losses_*; this covers what the loop
adds around them: the step-wide normaliser, the trust uniforms drawn for all rows at once, and
`entropy_top20`'s step-wide entropy cut (an extra no-grad pass when there are micro-batches).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tropd.teacher.client import ScoredSequence
from tropd.trainer.batch import TrainSequence, trained_tokens
from tropd.trainer.config import OptimConfig
from tropd.trainer.losses import LossConfig
from tropd.trainer.update import apply_update
from tropd.trainer.world import builtin_world_dir


def _rollouts(vocab: int, n: int = 8) -> tuple[list[TrainSequence], list[ScoredSequence]]:
    """Ragged random rollouts with plausible teacher and behaviour log-probs."""
    rng = np.random.default_rng(0)
    sequences, scores = [], []
    for i in range(n):
        context, response = 5, int(rng.integers(3, 12))
        sequences.append(
            TrainSequence(
                prompt_index=i, context_len=context,
                ids=rng.integers(4, vocab, context + response).astype(np.int64), prefix_len=0,
                behavior_logprobs=-rng.uniform(0.1, 3.0, response).astype(np.float32),
            )
        )  # fmt: skip
        scores.append(ScoredSequence(logprobs=-rng.uniform(0.0, 8.0, response).astype(np.float32)))
    return sequences, scores


def _weights_after_one_step(method: str, micro_batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(builtin_world_dir() / "student")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sequences, scores = _rollouts(model.config.vocab_size)
    result = apply_update(
        model, optimizer, sequences, scores, LossConfig(method=method),
        OptimConfig(micro_batch_size=micro_batch_size, grad_clip=1e9),
        torch.Generator().manual_seed(1), pad_id=0,
    )  # fmt: skip
    assert result.applied
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["opd", "entropy_top20"])
def test_micro_batch_split_does_not_change_the_step(method: str) -> None:
    whole = _weights_after_one_step(method, micro_batch_size=8)
    split = _weights_after_one_step(method, micro_batch_size=3)
    start = AutoModelForCausalLM.from_pretrained(builtin_world_dir() / "student")
    moved = max(float((whole[n] - p.detach()).abs().max()) for n, p in start.named_parameters())
    assert moved > 1e-4  # the step did something, so equality below is not vacuous
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)


def test_trained_tokens_count_every_response_token_prefix_included() -> None:
    sequences = [
        TrainSequence(0, 3, np.arange(7), prefix_len=2, behavior_logprobs=np.zeros(4, np.float32)),
        TrainSequence(1, 2, np.arange(3), prefix_len=0, behavior_logprobs=np.zeros(1, np.float32)),
    ]
    assert trained_tokens(sequences) == 5
