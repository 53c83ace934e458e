"""Student log-probs from hidden states, chunk by chunk: never a [B, T, V] tensor.

Boundary: takes the decoder's last hidden states flattened to [P, D] (P = rows x padded
length), the flat positions that predict a token and the tokens they predict; returns float32
per-token statistics (sampled-token log-prob, log-probs at given ids, entropy). Knows nothing
about losses, rows or micro-batches (`alignment.py` maps response tokens to positions).

Memory: the output layer runs on one chunk of positions at a time, sized so its float32 logits
are `chunk_mib`; each chunk is wrapped in `torch.utils.checkpoint`, so backward recomputes that
chunk's logits instead of keeping them. The peak is a few [chunk, V] blocks whatever the
vocabulary or the sequence length; the price is one more output-layer matmul per chunk.

Why by hand: the fused kernels that avoid the logits (liger-kernel's fused linear cross
entropy) compute a loss of the labels, not the per-token log-probs, log-probs at the teacher's
top-k ids and entropy that these losses read; and they are CUDA-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from tropd.output_head import OutputHead


def chunk_positions(vocab_size: int, chunk_mib: float) -> int:
    """Positions per chunk so that one float32 [chunk, V] block is about `chunk_mib`."""
    return max(1, int(chunk_mib * 2**20) // (4 * vocab_size))


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of the student's untempered distribution, float32."""

    logprobs_N: torch.Tensor  # log π(target), differentiable
    topk_logprobs_N_K: torch.Tensor | None  # log π at the given ids, differentiable
    entropy_N: torch.Tensor  # nats, no gradient


def _chunk_stats(
    head: OutputHead, hidden_C_D: torch.Tensor, rows_n: torch.Tensor, ids_n_J: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π at `ids_n_J` (row n of the chunk's `rows_n[n]`) and the entropy of those rows.

    The output layer and the log-softmax run on every row of the chunk (prompt and padding
    rows too) and one advanced index reads the wanted entries: its backward is one zero-filled
    [chunk, V] gradient with a sparse write, and with one chunk the arithmetic is exactly that
    of `model(...).logits` followed by gathers, so the float32 path is bitwise the old one.
    """
    logprobs_C_V = torch.log_softmax(head.logits(hidden_C_D), dim=-1)
    picked_n_J = logprobs_C_V[rows_n[:, None], ids_n_J]
    # Last, and without grad: checkpoint's recompute stops before it (early stop). nansum: a
    # token with probability 0 and log-prob -inf (a masked logit) contributes 0, not NaN.
    with torch.no_grad():
        entropy_C = -(logprobs_C_V.exp() * logprobs_C_V).nansum(-1)
    return picked_n_J, entropy_C[rows_n]


def token_stats(
    head: OutputHead,
    hidden_P_D: torch.Tensor,
    positions_N: torch.Tensor,
    targets_N: torch.Tensor,
    ids_N_K: torch.Tensor | None = None,
    chunk: int = 1024,
) -> TokenStats:
    """log π(targets), log π at `ids` and the entropy at the given positions, chunk by chunk.

    Args:
        head: the output layer (`OutputHead.of(model)`).
        hidden_P_D: the decoder's last hidden states, rows flattened: [P, D].
        positions_N: int64 [N], ascending flat positions whose next-token distribution is read.
        targets_N: int64 [N], the token whose log-prob is wanted at each position.
        ids_N_K: int64 [N, K] extra ids per position (the teacher's top-k), or None.
        chunk: positions per output-layer call (`chunk_positions`).
    Returns:
        TokenStats; the log-probs carry gradients to `hidden_P_D` and the head's weights,
        recomputed chunk by chunk in backward when grad is enabled.
    """
    grad = torch.is_grad_enabled()
    # The target and the extra ids are read in one index, so backward writes one gradient.
    ids_N_J = targets_N[:, None] if ids_N_K is None else torch.cat([targets_N[:, None], ids_N_K], 1)
    # `split` (not slicing): backward joins the chunks' gradients once, instead of one
    # [P, D] zero-filled gradient per chunk.
    pieces_C_D = hidden_P_D.split(chunk)
    bounds = torch.arange(len(pieces_C_D) + 1, device=positions_N.device) * chunk
    cuts = torch.searchsorted(positions_N, bounds).tolist()
    picked: list[torch.Tensor] = []
    entropy: list[torch.Tensor] = []
    for k, hidden_C_D in enumerate(pieces_C_D):
        lo, hi = cuts[k], cuts[k + 1]
        if lo == hi:
            continue  # no position of this chunk is read (prompt or padding only)
        args = (head, hidden_C_D, positions_N[lo:hi] - k * chunk, ids_N_J[lo:hi])
        # Recompute in backward (grad) rather than keep [chunk, V] blocks alive until then.
        out = checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args)
        picked.append(out[0])
        entropy.append(out[1])
    picked_N_J = torch.cat(picked) if picked else hidden_P_D.new_zeros(0, ids_N_J.shape[1])
    return TokenStats(
        logprobs_N=picked_N_J[:, 0].float(),
        topk_logprobs_N_K=None if ids_N_K is None else picked_N_J[:, 1:].float(),
        entropy_N=torch.cat(entropy) if entropy else hidden_P_D.new_zeros(0).float(),
    )
