"""The teacher's grades of a step's rollouts: Score requests that each fit the teacher's request
limit, up to `in_flight` of them at once, asking only for what the loss reads.

Several requests in flight is what lets a balanced channel (`TeacherClient` over several
replicas, round robin) keep every replica busy during one step; one replica batches concurrent
requests together anyway. Results come back in the order of the sequences whatever order the
requests finish in, and scores do not depend on how sequences were grouped (float32 scores are
batch-invariant), so the split changes timing, not training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tropd.teacher.client import ScoredSequence, ScoreResults, TeacherClient, TeacherInfo
from tropd.trainer.batch import TrainSequence
from tropd.trainer.losses import LossConfig, needs_student_topk, needs_teacher_entropy, needs_topk


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


def split(
    sequences: Sequence[TrainSequence], max_request_tokens: int, in_flight: int
) -> list[Sequence[TrainSequence]]:
    """Consecutive chunks, each within `max_request_tokens`, and about `in_flight` of them when
    the limit alone would give fewer (so that that many requests can run at once)."""
    total = sum(q.ids.size for q in sequences)
    share = -(-total // max(in_flight, 1))  # ceil: in_flight chunks of about equal tokens
    return _chunks(sequences, max(1, min(max_request_tokens, share)))


def _candidates(q: TrainSequence) -> np.ndarray:
    if q.student_topk_ids is None:
        raise ValueError("the loss reads the student's own top-k, but the rollout recorded none")
    return q.student_topk_ids.astype(np.int32)


def scorer(
    client: TeacherClient, info: TeacherInfo, loss: LossConfig
) -> Callable[[Sequence[TrainSequence]], ScoreResults]:
    """One Score request per call: teacher log-probs of every response token of the chunk,
    plus top-k / entropy when the loss reads them (`needs_topk`, `needs_teacher_entropy`), and
    the log-probs at the student's own top-C ids as candidates when it reads those."""
    extras = ("entropy",) if needs_teacher_entropy(loss) else ()
    # k may exceed a small vocabulary; the loss uses every column it gets.
    top_k = min(loss.topk, info.vocab_size) if needs_topk(loss) else 0
    own_topk = needs_student_topk(loss)

    def score(chunk: Sequence[TrainSequence]) -> ScoreResults:
        cands = [_candidates(q) for q in chunk] if own_topk else None
        return client.score(
            [q.ids for q in chunk], starts=[q.context_len for q in chunk], top_k=top_k,
            candidates=cands, extras=extras,
        )  # fmt: skip

    return score


def collect(results: Sequence[ScoreResults]) -> Grades:
    """The rows of results in order, and their queue and compute time summed in that order."""
    scores = [row for result in results for row in result]
    queue_s = sum(r.timing.queue_seconds for r in results)
    compute_s = sum(r.timing.compute_seconds for r in results)
    return Grades(scores, queue_s, compute_s)


def grade(
    client: TeacherClient,
    info: TeacherInfo,
    sequences: Sequence[TrainSequence],
    loss: LossConfig,
    in_flight: int = 1,
) -> Grades:
    """Teacher log-probs of every response token, plus top-k / entropy when the loss reads them.

    Args:
        client, info: the teacher and what it said of itself (limits, vocabulary size).
        sequences: the step's rollouts; each is scored from its `context_len` on.
        loss: decides the extras asked for (`needs_topk`, `needs_teacher_entropy`, and the
            student's own top-k as `candidates`: `needs_student_topk`).
        in_flight: Score requests sent at once (`teacher.max_in_flight`); 1 sends them one
            after another.
    Returns:
        Grades aligned with `sequences`, and the teacher's queue and compute time summed over
        the requests (in request order, so the sums do not depend on completion order).
    Raises:
        TeacherClientError: the first failed request's error, once every request has ended.
    """
    score = scorer(client, info, loss)
    chunks = split(sequences, info.limits.max_request_tokens, in_flight)
    if in_flight <= 1 or len(chunks) == 1:
        return collect([score(chunk) for chunk in chunks])
    # Bounded: at most `in_flight` threads; map keeps the chunks' order and re-raises the
    # first failure after the pool has waited for the rest (no request is left running).
    with ThreadPoolExecutor(min(in_flight, len(chunks)), "teacher-score") as pool:
        return collect(list(pool.map(score, chunks)))
