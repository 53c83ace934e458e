"""Output layer and per-position statistics for the `hf` backend, in float32, chunk by chunk.

Boundary: takes hidden states already gathered at the scored positions (one row per scored
token, tasks concatenated in order) and returns per-task numpy arrays. Knows nothing about
padding or how the hidden states were produced. Peak memory is one `[chunk, vocab]` float32
block (plus a few of its temporaries), whatever the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tropd.output_head import OutputHead
from tropd.teacher.backends.base import ScoreTask
from tropd.wire.types import ScoredSequence


@dataclass(frozen=True)
class ScoreRequestShape:
    """What a batch asks for, as a whole: the widest top-k and candidate set, and the extras."""

    max_k: int
    max_candidates: int
    logsumexp: bool
    entropy: bool
    rank: bool

    @classmethod
    def of(cls, tasks: Sequence[ScoreTask], vocab_size: int) -> ScoreRequestShape:
        max_k = max(t.top_k for t in tasks)
        if max_k > vocab_size:
            raise ValueError(f"top_k {max_k} exceeds the vocabulary size {vocab_size}")
        widths = [t.candidates.shape[1] for t in tasks if t.candidates is not None]
        return cls(
            max_k=max_k,
            max_candidates=max(widths, default=0),
            logsumexp=any(t.want_logsumexp for t in tasks),
            entropy=any(t.want_entropy for t in tasks),
            rank=any(t.want_rank for t in tasks),
        )


def _targets_and_candidates(
    tasks: Sequence[ScoreTask], max_candidates: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scored token ids [N] and candidate ids [N, C] (zero-padded; padding sliced off later)."""
    targets_N = np.concatenate([t.ids[t.start : t.end] for t in tasks]).astype(np.int64)
    if max_candidates == 0:
        return targets_N, None
    candidates_N_C = np.zeros((len(targets_N), max_candidates), dtype=np.int64)
    offset = 0
    for t in tasks:
        if t.candidates is not None:
            candidates_N_C[offset : offset + t.num_scored, : t.candidates.shape[1]] = t.candidates
        offset += t.num_scored
    return targets_N, candidates_N_C


def _chunk_stats(
    logits_N_V: torch.Tensor,
    targets_N: torch.Tensor,
    candidates_N_C: torch.Tensor | None,
    shape: ScoreRequestShape,
) -> dict[str, torch.Tensor]:
    """Every requested statistic of one chunk of float32 logits (see proto ScoreResult)."""
    logsumexp_N = torch.logsumexp(logits_N_V, dim=-1)
    logprobs_N_V = logits_N_V - logsumexp_N[:, None]
    out = {"logprobs": logprobs_N_V.gather(1, targets_N[:, None])[:, 0]}
    if shape.max_k:
        values_N_K, ids_N_K = torch.topk(logprobs_N_V, shape.max_k, dim=-1, sorted=True)
        out["topk_logprobs"], out["topk_ids"] = values_N_K, ids_N_K.int()
    if candidates_N_C is not None:
        out["candidate_logprobs"] = logprobs_N_V.gather(1, candidates_N_C)
    if shape.logsumexp:
        out["logsumexp"] = logsumexp_N
    if shape.entropy:
        # xlogy-style: p * log p is 0 where p is 0 (masked or -inf logits), never NaN.
        probs_N_V = logprobs_N_V.exp()
        terms_N_V = torch.where(probs_N_V > 0, probs_N_V * logprobs_N_V, 0.0)
        out["entropy"] = -terms_N_V.sum(dim=-1)
    if shape.rank:
        given_N = logits_N_V.gather(1, targets_N[:, None])
        out["rank"] = (logits_N_V > given_N).sum(dim=-1).int()
    return out


def score_positions(
    head: OutputHead,
    hidden_N_D: torch.Tensor,
    tasks: Sequence[ScoreTask],
    shape: ScoreRequestShape,
    chunk_size: int,
) -> list[ScoredSequence]:
    """Apply the head to gathered hidden states chunk by chunk and split results per task.

    Args:
        head: the model's output layer.
        hidden_N_D: hidden states predicting each scored token; rows of task 0, then task 1...
        tasks: the tasks, whose scored ids ids[start:end] are the rows' targets.
        shape: the batch-wide widths and extras (from `ScoreRequestShape.of`).
        chunk_size: rows per output-layer call.
    Returns:
        One ScoredSequence per task; optional arrays only where that task asked for them.
    """
    device = hidden_N_D.device
    targets, candidates = _targets_and_candidates(tasks, shape.max_candidates)
    targets_N = torch.as_tensor(targets, device=device)
    candidates_N_C = None if candidates is None else torch.as_tensor(candidates, device=device)
    parts: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, hidden_N_D.shape[0], chunk_size):
        hi = lo + chunk_size
        logits_N_V = head.logits(hidden_N_D[lo:hi])
        chunk_candidates = None if candidates_N_C is None else candidates_N_C[lo:hi]
        stats = _chunk_stats(logits_N_V, targets_N[lo:hi], chunk_candidates, shape)
        del logits_N_V
        for name, value in stats.items():
            parts.setdefault(name, []).append(value.cpu())
    full = {name: torch.cat(chunks).numpy() for name, chunks in parts.items()}
    return _split(full, tasks)


def _split(full: dict[str, np.ndarray], tasks: Sequence[ScoreTask]) -> list[ScoredSequence]:
    outputs, offset = [], 0
    for t in tasks:
        rows = slice(offset, offset + t.num_scored)
        offset += t.num_scored
        candidate_logprobs = None
        if t.candidates is not None:
            width = t.candidates.shape[1]
            candidate_logprobs = (
                full["candidate_logprobs"][rows, :width]
                if width
                else np.zeros((t.num_scored, 0), dtype=np.float32)
            )
        outputs.append(
            ScoredSequence(
                logprobs=full["logprobs"][rows],
                topk_ids=full["topk_ids"][rows, : t.top_k] if t.top_k else None,
                topk_logprobs=full["topk_logprobs"][rows, : t.top_k] if t.top_k else None,
                candidate_logprobs=candidate_logprobs,
                logsumexp=full["logsumexp"][rows] if t.want_logsumexp else None,
                entropy=full["entropy"][rows] if t.want_entropy else None,
                rank=full["rank"][rows] if t.want_rank else None,
            )
        )
    return outputs
