"""The teacher's grades of a step's rollouts: one Score request per chunk of sequences that fits
the teacher's request limit, asking only for what the loss reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tropd.teacher.client import ScoredSequence, TeacherClient, TeacherInfo
from tropd.trainer.batch import TrainSequence
from tropd.trainer.losses import LossConfig, needs_teacher_entropy, needs_topk


@dataclass(frozen=True)
class Grades:
    scores: list[ScoredSequence]  # aligned with the graded sequences, response rows only
    queue_seconds: float  # summed over the requests, as the teacher reported them
    compute_seconds: float


def _chunks(sequences: Sequence[TrainSequence], budget: int) -> list[Sequence[TrainSequence]]:
    """Consecutive runs of sequences of at most `budget` tokens (one longer sequence alone)."""
    chunks, lo = [], 0
    while lo < len(sequences):
        hi, tokens = lo, 0
        while hi < len(sequences) and (hi == lo or tokens + sequences[hi].ids.size <= budget):
            tokens += sequences[hi].ids.size
            hi += 1
        chunks.append(sequences[lo:hi])
        lo = hi
    return chunks


def grade(
    client: TeacherClient, info: TeacherInfo, sequences: Sequence[TrainSequence], loss: LossConfig
) -> Grades:
    """Teacher log-probs of every response token, plus top-k / entropy when the loss reads them.

    Args:
        client, info: the teacher and what it said of itself (limits, vocabulary size).
        sequences: the step's rollouts; each is scored from its `context_len` on.
        loss: decides the extras asked for (`needs_topk`, `needs_teacher_entropy`).
    """
    extras = ("entropy",) if needs_teacher_entropy(loss) else ()
    # k may exceed a small vocabulary; the loss uses every column it gets.
    top_k = min(loss.topk, info.vocab_size) if needs_topk(loss) else 0
    scores: list[ScoredSequence] = []
    queue_s = compute_s = 0.0
    for chunk in _chunks(sequences, info.limits.max_request_tokens):
        results = client.score(
            [q.ids for q in chunk], starts=[q.context_len for q in chunk], top_k=top_k,
            extras=extras,
        )  # fmt: skip
        scores.extend(results)
        queue_s += results.timing.queue_seconds
        compute_s += results.timing.compute_seconds
    return Grades(scores, queue_s, compute_s)
