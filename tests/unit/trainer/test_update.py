"""`apply_update` on real students: the micro-batch split (by count or by token budget) does not
change the step, gradient checkpointing does not change the gradient, and with float32 master
weights a bf16-compute step at the paper's lr 5e-6 moves (nearly) every weight.

The losses are tested against per-token references in test_losses_*; this covers what the loop
adds around them: the step-wide normaliser, the trust uniforms drawn for all rows at once, and
`entropy_top20`'s step-wide entropy cut (an extra no-grad pass when there are micro-batches).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from tropd.teacher.client import ScoredSequence
from tropd.trainer.batch import TrainSequence, plan_micro_batches, trained_tokens
from tropd.trainer.config import OptimConfig
from tropd.trainer.losses import LossConfig
from tropd.trainer.precision import Precision
from tropd.trainer.setup import enable_checkpointing
from tropd.trainer.start_anchor import Anchor
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
                finish_reason="length",
            )
        )  # fmt: skip
        scores.append(ScoredSequence(logprobs=-rng.uniform(0.0, 8.0, response).astype(np.float32)))
    return sequences, scores


def _weights_after_one_step(method: str, **optim: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(builtin_world_dir() / "student")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sequences, scores = _rollouts(model.config.vocab_size)
    result = apply_update(
        model, optimizer, sequences, scores, LossConfig(method=method),
        OptimConfig(grad_clip=1e9, **optim), torch.Generator().manual_seed(1), pad_id=0,
    )  # fmt: skip
    assert result.applied
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["opd", "entropy_top20"])
@pytest.mark.parametrize(
    "split",
    [{"micro_batch_size": 3}, {"micro_batch_tokens": 40}, {"micro_batch_tokens": 1}],
    ids=["3-rollouts", "40-tokens", "1-token"],
)
def test_micro_batch_split_does_not_change_the_step(method: str, split: dict) -> None:
    whole = _weights_after_one_step(method, micro_batch_size=8)
    parts = _weights_after_one_step(method, **split)
    start = AutoModelForCausalLM.from_pretrained(builtin_world_dir() / "student")
    moved = max(float((whole[n] - p.detach()).abs().max()) for n, p in start.named_parameters())
    assert moved > 1e-4  # the step did something, so equality below is not vacuous
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)


def test_token_budget_plan_packs_by_length() -> None:
    sequences, _ = _rollouts(19, n=8)
    lengths = [int(s.ids.size) for s in sequences]
    plan = plan_micro_batches(sequences, max_rows=64, max_tokens=40)
    assert sorted(i for rows in plan for i in rows) == list(range(8))  # each rollout once
    for rows in plan:
        width = max(lengths[i] for i in rows)
        assert len(rows) * width <= 40 or len(rows) == 1  # within budget, or alone
        assert lengths[rows[0]] == width  # longest first: its length is the padded width
    assert len(plan) < 8  # it packed
    assert plan_micro_batches(sequences, 3, None) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert all(len(rows) <= 2 for rows in plan_micro_batches(sequences, 2, 10_000))


def _tiny_qwen3(vocab: int, **extra: object) -> torch.nn.Module:
    """Qwen3-1.7B's vocabulary and tied head on a tiny random body (no download)."""
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True, **extra,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


class _KeepGrads(torch.optim.Optimizer):
    """Steps nothing; keeps a copy of the gradients it was asked to apply."""

    def __init__(self, params: object) -> None:
        super().__init__(params, {})  # type: ignore[arg-type]
        self.grads: list[torch.Tensor] = []

    def step(self, closure: object = None) -> None:  # type: ignore[override]
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"]]


def _grads(model: torch.nn.Module, vocab: int, **optim: object) -> list[torch.Tensor]:
    sequences, scores = _rollouts(vocab)
    optimizer = _KeepGrads(model.parameters())
    apply_update(model, optimizer, sequences, scores, LossConfig(method="opd"),
                 OptimConfig(grad_clip=1e9, **optim), torch.Generator().manual_seed(1),
                 pad_id=0)  # fmt: skip
    return optimizer.grads


def test_gradient_checkpointing_gives_the_same_gradient() -> None:
    plain = _grads(_tiny_qwen3(2048), 2048)
    model = _tiny_qwen3(2048)
    enable_checkpointing(model)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    checkpointed = _grads(model, 2048)
    for got, want in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _changed_fraction(param_dtype: torch.dtype, compute: str) -> float:
    """Share of weight elements one AdamW step at lr 5e-6 changes (Qwen3 vocabulary)."""
    model = _tiny_qwen3(151_936).to(param_dtype)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.1)
    sequences, scores = _rollouts(151_936, n=4)
    result = apply_update(model, optimizer, sequences, scores, LossConfig(method="opd"),
                          OptimConfig(), torch.Generator().manual_seed(1), pad_id=0,
                          precision=Precision.of(compute, "cpu"))  # fmt: skip
    assert result.applied
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before,
                                                                strict=True))  # fmt: skip
    return changed / sum(b.numel() for b in before)


def test_bf16_compute_with_float32_master_weights_moves_every_weight() -> None:
    assert _changed_fraction(torch.float32, "bfloat16") >= 0.99
    # The old way, bf16 weights stepped by AdamW: most of the update rounds away.
    assert _changed_fraction(torch.bfloat16, "bfloat16") < 0.5


def test_fp16_compute_scales_the_loss() -> None:
    model = _tiny_qwen3(2048)
    precision = Precision.of("float16", "cpu")
    assert precision.scaler is not None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sequences, scores = _rollouts(2048)
    result = apply_update(model, optimizer, sequences, scores, LossConfig(method="opd"),
                          OptimConfig(), torch.Generator().manual_seed(1), pad_id=0,
                          precision=precision)  # fmt: skip
    assert result.applied and np.isfinite(result.grad_norm)
    # The reported norm is of the unscaled gradient: close to the float32 step's.
    base = _tiny_qwen3(2048)
    reference = apply_update(base, _KeepGrads(base.parameters()), sequences, scores,
                             LossConfig(method="opd"), OptimConfig(),
                             torch.Generator().manual_seed(1), pad_id=0)  # fmt: skip
    assert result.grad_norm == pytest.approx(reference.grad_norm, rel=0.05)


def test_trained_tokens_count_every_response_token_prefix_included() -> None:
    sequences = [
        TrainSequence(0, 3, np.arange(7), prefix_len=2, behavior_logprobs=np.zeros(4, np.float32),
                      finish_reason="eos"),
        TrainSequence(1, 2, np.arange(3), prefix_len=0, behavior_logprobs=np.zeros(1, np.float32),
                      finish_reason="length"),
    ]
    assert trained_tokens(sequences) == 5


def test_anchor_reads_the_frozen_start_at_the_sampled_tokens() -> None:
    """The KL anchor's gradient (`loss.anchor_kl`), at Qwen3's real vocabulary: the update with
    the anchor minus the update without it equals the gradient of the anchor term computed here
    from a plain full-vocabulary forward of each row (no padding, no chunking) of both models."""
    vocab, beta = 151_936, 0.7
    student = _tiny_qwen3(vocab)
    torch.manual_seed(1)
    start = AutoModelForCausalLM.from_config(student.config).requires_grad_(False)
    sequences, scores = _rollouts(vocab, n=4)

    def grads(anchor: Anchor | None) -> tuple[list[torch.Tensor], dict[str, float]]:
        optimizer = _KeepGrads(student.parameters())
        result = apply_update(student, optimizer, sequences, scores, LossConfig(method="opd"),
                              OptimConfig(grad_clip=1e9), torch.Generator().manual_seed(1),
                              pad_id=0, anchor=anchor)  # fmt: skip
        return optimizer.grads, result.metrics

    plain, _ = grads(None)
    anchored, metrics = grads(Anchor(start, beta))
    assert metrics["loss_anchor"] != 0.0 and "loss_anchor" not in grads(Anchor(start, 0.0))[1]
    student.zero_grad()
    reference = torch.zeros(())
    for seq in sequences:
        ids = torch.as_tensor(seq.ids)[None]
        n = seq.response_len
        lp_s = torch.log_softmax(student(ids).logits[0, -n - 1 : -1], -1)
        lp_0 = torch.log_softmax(start(ids).logits[0, -n - 1 : -1], -1)
        response = ids[0, -n:]
        reward = beta * (lp_0.gather(-1, response[:, None])[:, 0]
                         - torch.as_tensor(seq.behavior_logprobs))  # fmt: skip
        reference = reference - (reward.detach() * lp_s.gather(-1, response[:, None])[:, 0]).sum()
    (reference / trained_tokens(sequences)).backward()
    for with_anchor, without, p in zip(anchored, plain, student.parameters(), strict=True):
        torch.testing.assert_close(with_anchor - without, p.grad, atol=1e-5, rtol=1e-4)
