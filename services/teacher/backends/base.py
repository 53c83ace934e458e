"""The backend interface: what the server needs from a model, and nothing else.

A backend knows nothing about gRPC, queues or callers. It receives already-validated work
(ids in range, spans in range, k within the cap) and returns numpy arrays in the wire's value
types (`tropd.wire.types.ScoredSequence`, `Generation`; float32 log-probs). Heavy imports
(torch, transformers, a TGI client) belong in the module of the backend that needs them.

Alignment: for a ScoreTask, row i of every output array scores ids[start + i] given
ids[:start + i] (see proto/tropd/teacher/v1/teacher.proto).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tropd.teacher.errors import TeacherError
from tropd.teacher.fingerprint import TokenizerFingerprint
from tropd.wire.types import Capabilities, Generation, ScoredSequence


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    revision: str
    backend: str  # registry name: "hf", "tgi"
    dtype: str  # e.g. "float32", "bfloat16"
    device: str  # e.g. "cpu", "cuda:0"
    vocab_size: int  # rows of the output layer
    max_sequence_length: int
    tokenizer: TokenizerFingerprint
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass(frozen=True)
class ScoreTask:
    """One sequence to score, validated against the server limits."""

    ids: np.ndarray  # int32 [n]
    start: int  # >= 1
    end: int  # start < end <= n
    top_k: int = 0
    candidates: np.ndarray | None = None  # int32 [end - start, C]
    want_logsumexp: bool = False
    want_entropy: bool = False
    want_rank: bool = False

    @property
    def num_scored(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class GenerateTask:
    prompt: np.ndarray  # int32 [n], n >= 1
    max_new_tokens: int  # >= 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed + same prompt -> same tokens, whatever the batch
    stop_ids: tuple[int, ...] = ()


class Backend(Protocol):
    """A model that scores and generates token ids. Calls arrive from one worker thread."""

    def info(self) -> BackendInfo: ...

    def warmup(self) -> None:
        """Run a small forward so the first real request pays no lazy-initialisation cost."""

    def score(self, tasks: Sequence[ScoreTask]) -> Sequence[ScoredSequence | TeacherError]:
        """Score a batch. Results must not depend on which other tasks share the batch.

        A `TeacherError` in place of an output fails that task alone (its caller gets the
        error's status); raising fails the whole batch.
        """
        ...

    def generate(self, tasks: Sequence[GenerateTask]) -> list[Generation]:
        """Sample continuations for a batch of prompts, one output per task, in order."""
        ...
