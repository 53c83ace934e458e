"""Chunked student log-probs against the naive full-softmax computation, at the real vocabulary
size (a random Qwen3 of Qwen3-1.7B's vocabulary and tying, tiny body): values and gradients of
the sampled-token log-probs and the log-probs at top-k ids within 1e-5 in float32, and the
entropy (about 12 nats at this vocabulary) within 1e-5 relative. Gradients are of a token-mean
functional, as the update's loss is; chunks of one position (the worst summation order) included.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from tropd.output_head import OutputHead, decoder_hidden
from tropd.trainer.alignment import flat_response_positions
from tropd.trainer.logprobs import chunk_positions, token_stats

VOCAB = 151_936


def _tiny_qwen3(vocab: int = VOCAB, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True, **extra,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).train()


def _naive(
    model: torch.nn.Module,
    ids_B_L: torch.Tensor,
    starts_B: torch.Tensor,
    lengths_B: torch.Tensor,
    topk_B_T_K: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The whole-tensor computation: full logits, log_softmax over [B, T, V], gather."""
    logits_B_L_V = model(input_ids=ids_B_L).logits.float()
    rows = []
    for b in range(ids_B_L.shape[0]):
        s, n = int(starts_B[b]), int(lengths_B[b])
        logprobs_T_V = torch.log_softmax(logits_B_L_V[b, s - 1 : s - 1 + n], dim=-1)
        target = logprobs_T_V.gather(-1, ids_B_L[b, s : s + n, None])[:, 0]
        entropy = -(logprobs_T_V.exp() * logprobs_T_V).sum(-1)
        rows.append((target, logprobs_T_V.gather(-1, topk_B_T_K[b, :n]), entropy))
    return tuple(torch.cat([r[i] for r in rows]) for i in range(3))


def _batch(vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    ids_B_L = torch.randint(0, vocab, (3, 24), generator=gen)
    starts_B = torch.tensor([5, 1, 9])
    lengths_B = torch.tensor([19, 7, 15])  # ragged; row 1 ends well before the padded width
    topk_B_T_K = torch.randint(0, vocab, (3, 19, 8), generator=gen)
    return ids_B_L, starts_B, lengths_B, topk_B_T_K


@pytest.mark.parametrize("chunk", [1, 7, 24, 10_000])
def test_values_and_gradients_equal_the_full_softmax(chunk: int) -> None:
    model = _tiny_qwen3()
    ids_B_L, starts_B, lengths_B, topk_B_T_K = _batch(VOCAB)
    head = OutputHead.of(model)
    positions_N, valid_B_T = flat_response_positions(starts_B, lengths_B, 19, ids_B_L.shape[1])
    hidden_B_L_D = decoder_hidden(model, input_ids=ids_B_L)
    targets_N = ids_B_L.reshape(-1)[positions_N + 1]  # flat position p predicts token p + 1
    stats = token_stats(head, hidden_B_L_D.reshape(-1, 64), positions_N, targets_N,
                        topk_B_T_K[valid_B_T], chunk=chunk)  # fmt: skip
    target, at_topk, entropy = _naive(model, ids_B_L, starts_B, lengths_B, topk_B_T_K)
    torch.testing.assert_close(stats.logprobs_N, target, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.topk_logprobs_N_K, at_topk, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.entropy_N, entropy.detach(), atol=1e-5, rtol=1e-5)
    assert not stats.entropy_N.requires_grad

    # A random token-mean functional of both outputs: its gradient w.r.t. every weight.
    gen = torch.Generator().manual_seed(2)
    w_N = torch.randn(target.shape, generator=gen) / target.numel()
    w_N_K = torch.randn(at_topk.shape, generator=gen) / target.numel()
    params = list(model.parameters())
    chunked = torch.autograd.grad((stats.logprobs_N * w_N).sum()
                                  + (stats.topk_logprobs_N_K * w_N_K).sum(), params)  # fmt: skip
    naive = torch.autograd.grad((target * w_N).sum() + (at_topk * w_N_K).sum(), params)
    for (name, _), got, want in zip(model.named_parameters(), chunked, naive, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


def test_no_grad_path_and_no_positions() -> None:
    model = _tiny_qwen3(vocab=1000)
    head = OutputHead.of(model)
    hidden_P_D = torch.randn(40, 64)
    positions_N = torch.tensor([3, 4, 30])
    with torch.no_grad():
        stats = token_stats(head, hidden_P_D, positions_N, torch.tensor([1, 2, 3]), chunk=8)
    logprobs_N_V = torch.log_softmax(head.logits(hidden_P_D[positions_N]), dim=-1)
    torch.testing.assert_close(stats.logprobs_N, logprobs_N_V[[0, 1, 2], [1, 2, 3]])
    assert stats.topk_logprobs_N_K is None
    none_N = torch.zeros(0, dtype=torch.long)
    empty = token_stats(head, hidden_P_D, none_N, none_N, torch.zeros(0, 4, dtype=torch.long))
    assert empty.logprobs_N.shape == (0,) and empty.topk_logprobs_N_K.shape == (0, 4)


def test_chunk_size_follows_the_vocabulary() -> None:
    # 64 MiB of float32 logits: 110 positions at Qwen3's vocabulary, 4096 at a 4k one.
    assert chunk_positions(VOCAB, 64) == 110
    assert chunk_positions(4096, 64) == 4096
    assert chunk_positions(10**9, 1) == 1


def test_head_transforms_and_refusal() -> None:
    """A soft-capped head (Gemma's transform) read through OutputHead equals the model's
    logits; a head transform OutputHead does not know is refused by the check."""
    from transformers import Gemma2Config

    config = Gemma2Config(vocab_size=300, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          intermediate_size=64, final_logit_softcapping=3.0)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    ids_T = torch.arange(10)
    head = OutputHead.of(model)
    assert head.softcap == 3.0
    head.check_against_model(model, ids_T)
    unknown = OutputHead(head.linear, head.vocab_size)  # forgets the cap
    with pytest.raises(ValueError, match="transform"):
        unknown.check_against_model(model, ids_T)
