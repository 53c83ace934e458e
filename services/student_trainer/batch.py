"""Training sequences and their collation into padded tensors for one micro-batch.

A TrainSequence is one rollout: context + response, the response possibly opening with a
teacher-written guidance prefix. Teacher scores arrive per sequence (numpy, response rows only)
and are padded here next to the student's own tensors, so the loss sees [B, T] arrays whose
row t is response token t everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tropd.teacher.client import ScoredSequence


@dataclass(frozen=True)
class TrainSequence:
    prompt_index: int  # index into the step's prompt list
    context_len: int  # prompt tokens (bos included); the response starts here
    ids: np.ndarray  # int64 [context_len + R]: prompt, then response
    prefix_len: int  # teacher-written guidance tokens at the start of the response
    behavior_logprobs: np.ndarray  # float32 [R]; NaN on prefix tokens (the student did not
    # sample them), zeros for teacher drafts trained as they are (sft)
    finish_reason: str = "eos"  # "eos" (the response ends with an eos id) or "length" (cut)
    student_topk_ids: np.ndarray | None = None  # int64 [R, C]: the student's C likeliest ids
    # at each response token, recorded at sampling time (`rkl_topk`); zeros on prefix tokens

    @property
    def response_len(self) -> int:
        return int(self.ids.size - self.context_len)

    @property
    def response_ids(self) -> np.ndarray:
        return self.ids[self.context_len :]


def trained_tokens(sequences: Sequence[TrainSequence]) -> int:
    """The step's loss normaliser and throughput count: every response token, prefix included."""
    return sum(s.response_len for s in sequences)


def draft_sequences(
    prompts: Sequence[Sequence[int]], drafts: Sequence[np.ndarray], eos_ids: Sequence[int]
) -> list[TrainSequence]:
    """The `sft` baseline's rollouts: the teacher's drafts themselves, to train teacher-forced."""
    return [
        TrainSequence(
            prompt_index=p,
            context_len=len(prompt),
            ids=np.concatenate([np.asarray(prompt, np.int64), draft]),
            prefix_len=0,
            behavior_logprobs=np.zeros(draft.size, np.float32),
            finish_reason="eos" if draft.size and int(draft[-1]) in eos_ids else "length",
        )
        for p, (prompt, draft) in enumerate(zip(prompts, drafts, strict=True))
    ]


def plan_micro_batches(
    sequences: Sequence[TrainSequence], max_rows: int, max_tokens: int | None
) -> list[list[int]]:
    """Which rollouts share a forward/backward: lists of indices into `sequences`.

    Without a token budget: `max_rows` consecutive rollouts per micro-batch. With one,
    rollouts sorted by length (longest first) are packed while rows x padded length stays within
    `max_tokens` and rows within `max_rows`; a rollout longer than the budget goes alone. The
    step's gradient does not depend on the plan (the loss normaliser is the step's).
    """
    if max_tokens is None:
        return [list(range(lo, min(lo + max_rows, len(sequences))))
                for lo in range(0, len(sequences), max_rows)]  # fmt: skip
    order = sorted(range(len(sequences)), key=lambda i: -int(sequences[i].ids.size))
    plan: list[list[int]] = []
    for i in order:
        # Longest first, so the first row of a micro-batch sets its padded length.
        if plan and len(plan[-1]) < max_rows:
            width = int(sequences[plan[-1][0]].ids.size)
            if (len(plan[-1]) + 1) * width <= max_tokens:
                plan[-1].append(i)
                continue
        plan.append([i])
    return plan


@dataclass
class MicroBatch:
    """Padded tensors of one micro-batch; see losses.LossInputs for the loss-side names."""

    ids_B_L: torch.Tensor  # int64, right-padded with pad_id
    attention_B_L: torch.Tensor  # int64
    starts_B: torch.Tensor  # int64, response start per row
    lengths_B: torch.Tensor  # int64, response length per row
    response_ids_B_T: torch.Tensor  # int64, 0 on padding
    response_mask_B_T: torch.Tensor  # bool, on-policy tokens (not padding, not prefix)
    prefix_mask_B_T: torch.Tensor  # bool, guidance-prefix tokens
    behavior_logprobs_B_T: torch.Tensor  # float32
    teacher_logprobs_B_T: torch.Tensor  # float32
    teacher_topk_ids_B_T_K: torch.Tensor | None  # int64
    teacher_topk_logprobs_B_T_K: torch.Tensor | None  # float32
    teacher_entropy_B_T: torch.Tensor | None  # float32
    student_topk_ids_B_T_C: torch.Tensor | None = None  # int64, the student's own top-C
    teacher_cand_logprobs_B_T_C: torch.Tensor | None = None  # float32, the teacher at those ids

    @property
    def num_sequences(self) -> int:
        return int(self.ids_B_L.shape[0])


def _pad_rows(
    rows: Sequence[np.ndarray], width: int, fill: float, dtype: torch.dtype
) -> torch.Tensor:
    tail = rows[0].shape[1:]
    out = torch.full((len(rows), width, *tail), fill, dtype=dtype)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = torch.tensor(row, dtype=dtype)  # copies (rows may be read-only)
    return out


def collate(
    sequences: Sequence[TrainSequence], scores: Sequence[ScoredSequence | None], pad_id: int
) -> MicroBatch:
    """Pad sequences and their teacher scores into one MicroBatch.

    Args:
        sequences: the micro-batch's rollouts.
        scores: teacher results aligned with `sequences` (response rows only), or None for a
            method that needs no teacher scores (sft); the teacher fields are then zeros/None.
        pad_id: the tokenizer's padding id.
    Returns:
        The padded tensors on CPU.
    """
    width_L = max(int(s.ids.size) for s in sequences)
    width_T = max(s.response_len for s in sequences)
    ids_B_L = _pad_rows([s.ids for s in sequences], width_L, pad_id, torch.long)
    lengths_B = torch.tensor([s.response_len for s in sequences], dtype=torch.long)
    prefix_B = torch.tensor([s.prefix_len for s in sequences], dtype=torch.long)
    j_T = torch.arange(width_T)
    valid_B_T = j_T[None, :] < lengths_B[:, None]
    in_prefix_B_T = j_T[None, :] < prefix_B[:, None]
    response_ids = [s.response_ids for s in sequences]
    graded = [sc for sc in scores if sc is not None]
    have_scores = len(graded) == len(sequences)
    topk = have_scores and graded[0].topk_ids is not None
    entropy = have_scores and graded[0].entropy is not None
    own_topk = [s.student_topk_ids for s in sequences if s.student_topk_ids is not None]
    cands = have_scores and graded[0].candidate_logprobs is not None
    cands = cands and len(own_topk) == len(sequences)

    def teacher_rows(field: str, fill: float, dtype: torch.dtype) -> torch.Tensor:
        return _pad_rows([getattr(sc, field) for sc in graded], width_T, fill, dtype)

    zeros_B_T = torch.zeros((len(sequences), width_T), dtype=torch.float32)
    return MicroBatch(
        ids_B_L=ids_B_L,
        attention_B_L=(
            torch.arange(width_L)[None, :] < torch.tensor([s.ids.size for s in sequences])[:, None]
        ).long(),
        starts_B=torch.tensor([s.context_len for s in sequences], dtype=torch.long),
        lengths_B=lengths_B,
        response_ids_B_T=_pad_rows(response_ids, width_T, 0, torch.long),
        response_mask_B_T=valid_B_T & ~in_prefix_B_T,
        prefix_mask_B_T=valid_B_T & in_prefix_B_T,
        behavior_logprobs_B_T=_pad_rows(
            [s.behavior_logprobs for s in sequences], width_T, 0.0, torch.float32
        ),
        teacher_logprobs_B_T=(
            teacher_rows("logprobs", 0.0, torch.float32) if have_scores else zeros_B_T
        ),
        teacher_topk_ids_B_T_K=teacher_rows("topk_ids", 0, torch.long) if topk else None,
        teacher_topk_logprobs_B_T_K=(
            teacher_rows("topk_logprobs", 0.0, torch.float32) if topk else None
        ),
        teacher_entropy_B_T=teacher_rows("entropy", 0.0, torch.float32) if entropy else None,
        student_topk_ids_B_T_C=_pad_rows(own_topk, width_T, 0, torch.long) if cands else None,
        teacher_cand_logprobs_B_T_C=(
            teacher_rows("candidate_logprobs", 0.0, torch.float32) if cands else None
        ),
    )
