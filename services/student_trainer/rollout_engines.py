"""Rollout engines: what samples the student (`rollout.engine`), behind one small protocol.

An engine takes contexts (token ids) and returns, per row, the sampled ids, their behaviour
log-probs and why the row stopped (`rollout.Completion`), in groups as rows finish, so that the
step can send finished rows to the teacher while the rest still sample. After every optimizer
step the trainer calls `load_weights(model)`: an engine that keeps its own copy of the weights
(an inference server) syncs it there; the in-process engines share the module and do nothing.

The behaviour log-prob has one definition whatever the engine: log π_S(x_t | c_t) of the
untempered student, float32 (`teacher_forced_logprobs` is its reference; tests hold every
engine to it). Engines: `generate` (rollout.py) and `paged` (paged_engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedModel

from tropd.errors import ConfigError
from tropd.output_head import OutputHead, decoder_hidden
from tropd.trainer.alignment import flat_response_positions
from tropd.trainer.config import RolloutConfig
from tropd.trainer.logprobs import chunk_positions, token_stats
from tropd.trainer.rollout import Completion, generate_completions


class RolloutEngine(Protocol):
    """Samples completions of contexts; see the module docstring."""

    name: str

    def sample(
        self,
        model: PreTrainedModel,
        contexts: Sequence[Sequence[int]],
        samples_per_context: int,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        pad_id: int,
        temperature: float = 1.0,
        greedy: bool = False,
        batch_size: int | None = None,
        student_topk: int = 0,
        context_seeds: Sequence[int] | None = None,
    ) -> Iterator[list[Completion]]:
        """`samples_per_context` completions per context (row = context * samples + sample),
        yielded in groups as they finish; every row exactly once. Arguments as in
        `rollout.sample_completions`; the model is in eval mode during the call, restored
        after. `student_topk` > 0 also records the student's C likeliest ids per token
        (`Completion.topk_ids`), and `context_seeds` samples each context from its own seed
        (`train.parallel`); an engine that cannot do either refuses it. Groups must not depend on
        timing (only on the engine's own sampling), so that a seeded run chunks its Score
        requests the same way every time."""
        ...

    def load_weights(self, model: PreTrainedModel) -> None:
        """Called after every optimizer step with the updated student."""
        ...


class GenerateEngine:
    """HF `generate`, `batch_size` rows per call; each call's rows come back when it ends."""

    name = "generate"

    def sample(
        self,
        model: PreTrainedModel,
        contexts: Sequence[Sequence[int]],
        samples_per_context: int,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        pad_id: int,
        temperature: float = 1.0,
        greedy: bool = False,
        batch_size: int | None = None,
        student_topk: int = 0,
        context_seeds: Sequence[int] | None = None,
    ) -> Iterator[list[Completion]]:
        return generate_completions(model, contexts, samples_per_context, max_new_tokens,
                                    eos_ids, pad_id, temperature, greedy, batch_size,
                                    student_topk, context_seeds)  # fmt: skip

    def load_weights(self, model: PreTrainedModel) -> None:
        """Nothing: `generate` runs the trained module itself."""


def make_engine(cfg: RolloutConfig) -> RolloutEngine:
    """The engine `rollout.engine` names.

    Raises:
        ConfigError: an unknown engine (a config built without validation).
    """
    if cfg.engine == "generate":
        return GenerateEngine()
    if cfg.engine == "paged":
        from tropd.trainer.paged_engine import PagedEngine  # its imports load only when used

        return PagedEngine()
    raise ConfigError(f"rollout.engine: unknown engine {cfg.engine!r} (generate or paged)")


@torch.no_grad()
def teacher_forced_logprobs(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    completions: Sequence[Completion],
    pad_id: int,
    chunk_mib: float = 64.0,
) -> list[np.ndarray]:
    """The behaviour log-prob of every sampled token from one forward of context + completion
    per row (right-padded, output layer chunk by chunk as in the update): float32 [m] per
    completion. Callers wrap it in the student's autocast, as the rollout."""
    rows = [list(contexts[c.context_index]) + c.ids.tolist() for c in completions]
    width = max(len(r) for r in rows)
    ids_B_L = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask_B_L = torch.zeros_like(ids_B_L)
    for b, row in enumerate(rows):
        ids_B_L[b, : len(row)] = torch.as_tensor(row)
        mask_B_L[b, : len(row)] = 1
    device = next(model.parameters()).device
    hidden_B_L_D = decoder_hidden(model, input_ids=ids_B_L.to(device),
                                  attention_mask=mask_B_L.to(device))  # fmt: skip
    starts_B = torch.tensor([len(contexts[c.context_index]) for c in completions], device=device)
    lengths_B = torch.tensor([c.ids.size for c in completions], device=device)
    positions_N, _ = flat_response_positions(starts_B, lengths_B, int(lengths_B.max()), width)
    targets_N = torch.cat([torch.as_tensor(c.ids) for c in completions]).to(device)
    head = OutputHead.of(model)
    stats = token_stats(head, hidden_B_L_D.reshape(-1, hidden_B_L_D.shape[-1]), positions_N,
                        targets_N, chunk=chunk_positions(head.vocab_size, chunk_mib))  # fmt: skip
    logprobs_N = stats.logprobs_N.cpu().numpy().astype(np.float32)
    return np.split(logprobs_N, np.cumsum([c.ids.size for c in completions])[:-1])
