"""The one place the trainer maps "response token j" to model outputs.

A sequence is `ids = context + response`, with the response starting at `start = len(context)`.
Response token j is ids[start + j]; the causal LM predicts it from the logits at position
start + j - 1. This matches the teacher's contract (row i of a Score result scores
ids[start + i] given ids[:start + i]), so teacher rows and student rows line up one to one.
"""

from __future__ import annotations

import torch


def response_index(
    starts_B: torch.Tensor, lengths_B: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the logits that predict each response token, and which entries are real.

    Args:
        starts_B: int64 [B], first response position of each row (>= 1).
        lengths_B: int64 [B], response length of each row.
        width: T, the padded response width (>= max length).
    Returns:
        idx_B_T: int64 [B, T], logits position predicting response token j (clamped to >= 0 on
        padding so it is always a valid index), and valid_B_T: bool [B, T].
    """
    j_T = torch.arange(width, device=starts_B.device)
    valid_B_T = j_T.unsqueeze(0) < lengths_B.unsqueeze(1)
    idx_B_T = (starts_B.unsqueeze(1) + j_T.unsqueeze(0) - 1).clamp(min=0)
    idx_B_T = torch.where(valid_B_T, idx_B_T, torch.zeros_like(idx_B_T))
    return idx_B_T, valid_B_T


def flat_response_positions(
    starts_B: torch.Tensor, lengths_B: torch.Tensor, width_T: int, width_L: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_index` for rows flattened to [B * L]: the flat position predicting each real
    response token, in (row, token) order, and the [B, T] mask that places them back.

    Args:
        starts_B, lengths_B: as in `response_index`.
        width_T: the padded response width; width_L: the padded sequence width (L).
    Returns:
        positions_N: int64 [N], ascending, N = lengths_B.sum(); valid_B_T: bool [B, T], whose
        True entries in row-major order are those N tokens (`x_B_T[valid_B_T] = x_N`).
    """
    idx_B_T, valid_B_T = response_index(starts_B, lengths_B, width_T)
    rows_B_T = torch.arange(starts_B.shape[0], device=starts_B.device)[:, None] * width_L
    return (rows_B_T + idx_B_T)[valid_B_T], valid_B_T
