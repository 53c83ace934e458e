"""The backend interface: what the server needs from a model, and nothing else.

A backend knows nothing about gRPC, queues or callers. It receives already-validated work
(ids in range, spans in range, k within the cap) and returns numpy arrays. Heavy imports
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


@dataclass(frozen=True)
class Capabilities:
    score: bool = True
    top_k: bool = True
    candidates: bool = True
    logsumexp: bool = True
    entropy: bool = True
    rank: bool = True
    generate: bool = True


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


@dataclass
class ScoreOutput:
    """Per-position results of one ScoreTask; m = end - start rows each. float32 throughout."""

    logprobs: np.ndarray  # float32 [m]
    topk_ids: np.ndarray | None = None  # int32 [m, k], sorted by log-prob descending
    topk_logprobs: np.ndarray | None = None  # float32 [m, k]
    candidate_logprobs: np.ndarray | None = None  # float32 [m, C]
    logsumexp: np.ndarray | None = None  # float32 [m]
    entropy: np.ndarray | None = None  # float32 [m], nats
    rank: np.ndarray | None = None  # int32 [m], 0 = argmax


@dataclass(frozen=True)
class GenerateTask:
    prompt: np.ndarray  # int32 [n], n >= 1
    max_new_tokens: int  # >= 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed + same prompt -> same tokens, whatever the batch
    stop_ids: tuple[int, ...] = ()


@dataclass
class GenerateOutput:
    ids: np.ndarray  # int32 [m], generated tokens only (a stop id included when emitted)
    logprobs: np.ndarray  # float32 [m], untempered teacher log-prob of each generated token
    finish_reason: str  # "length" or "stop"


class Backend(Protocol):
    """A model that scores and generates token ids. Calls arrive from one worker thread."""

    def info(self) -> BackendInfo: ...

    def warmup(self) -> None:
        """Run a small forward so the first real request pays no lazy-initialisation cost."""

    def score(self, tasks: Sequence[ScoreTask]) -> Sequence[ScoreOutput | TeacherError]:
        """Score a batch. Results must not depend on which other tasks share the batch.

        A `TeacherError` in place of an output fails that task alone (its caller gets the
        error's status); raising fails the whole batch.
        """
        ...

    def generate(self, tasks: Sequence[GenerateTask]) -> list[GenerateOutput]:
        """Sample continuations for a batch of prompts, one output per task, in order."""
        ...
