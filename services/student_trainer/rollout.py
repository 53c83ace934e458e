"""Student rollouts: the `generate` engine (HF `generate`, KV cache) recording behaviour
log-probs, and `roll_out`, which turns any engine's completions into the step's sequences.

Token ids only; tokenisation and verification live in the loop and the task. The behaviour
log-prob of a token is log π_S(x_t | c_t) under the *untempered* student at sampling time, the
`lp_S_old` of the trust test, whatever the engine (`rollout_engines.py`). Here it is gathered
from each step's raw float32 logits right after the token is sampled, so no [rows, tokens, V]
tensor is ever kept; rows are generated `batch_size` at a time, which bounds the KV cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
)

from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import RolloutConfig

if TYPE_CHECKING:
    from tropd.trainer.rollout_engines import RolloutEngine


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a context."""

    context_index: int  # which context (of the call's list) it continues
    row: int  # context_index * samples_per_context + sample: the completion's place in order
    ids: np.ndarray  # int64 [m], sampled tokens, ending with eos when one was emitted
    behavior_logprobs: np.ndarray  # float32 [m]
    finish_reason: str  # "eos" (ends with one of the eos ids) or "length" (hit the cap)
    topk_ids: np.ndarray | None = None  # int64 [m, C]: the student's C likeliest ids per token


class _SampledLogprobs:
    """log π(sampled token) from each decoding step's raw logits, one [rows, V] block at a time.

    `generate` calls the processor with the step's raw float32 logits (it must come first in
    the list, before any temperature), samples, appends the token, then calls the stopping
    criteria; the criterion gathers the new token's log-prob and drops the block. HF offers no
    hook that hands over the sampled token with the raw logits without keeping all of them
    (`output_logits=True` stacks every step: rows x tokens x V floats).
    """

    def __init__(self, topk: int = 0) -> None:
        self.pending_B_V: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []  # float32 [rows] per generated token
        self.topk = topk  # also keep the C likeliest ids per token (`rkl_topk`'s candidates)
        self.topk_steps: list[torch.Tensor] = []  # int64 [rows, C] per generated token

    def logprobs_B_N(self, steps: int) -> torch.Tensor:
        return torch.stack(self.steps[:steps], dim=1)

    def topk_ids_B_N_C(self, steps: int) -> torch.Tensor | None:
        return torch.stack(self.topk_steps[:steps], dim=1) if self.topk else None


class _KeepRawLogits(LogitsProcessor):
    def __init__(self, record: _SampledLogprobs) -> None:
        self.record = record

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.record.pending_B_V = scores  # no copy: later processors return new tensors
        return scores


class _GatherSampled(StoppingCriteria):
    def __init__(self, record: _SampledLogprobs) -> None:
        self.record = record

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        logits_B_V, self.record.pending_B_V = self.record.pending_B_V, None
        if logits_B_V is None:
            raise RuntimeError("generate called the stopping criteria before the logits processor")
        logprobs_B_V = torch.log_softmax(logits_B_V, dim=-1)
        self.record.steps.append(logprobs_B_V.gather(-1, input_ids[:, -1:])[:, 0])
        if self.record.topk:  # raw logits: the untempered student's order
            k = min(self.record.topk, logits_B_V.shape[-1])
            self.record.topk_steps.append(logits_B_V.topk(k, dim=-1).indices)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _left_pad(contexts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(c) for c in contexts)
    ids_B_L = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask_B_L = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, ctx in enumerate(contexts):
        ids_B_L[row, width - len(ctx) :] = torch.as_tensor(list(ctx), dtype=torch.long)
        mask_B_L[row, width - len(ctx) :] = 1
    return ids_B_L, mask_B_L


@torch.no_grad()
def sample_completions(
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
) -> list[Completion]:
    """Sample `samples_per_context` completions for each context (prompt, maybe + guidance prefix).

    Args:
        model: the student, in eval mode during the call (dropout off), restored afterwards.
            Callers wrap the call in the student's autocast (`Precision.autocast`).
        contexts: token ids per context; lengths may differ (left-padded internally).
        samples_per_context: completions per context, grouped in context order.
        max_new_tokens: hard cap; a completion without eos stops there.
        eos_ids: every id that ends a completion (the tokenizer's eos, the generation
            config's, the chat template's end-of-turn token); pad_id: the tokenizer's padding id.
        temperature: sampling temperature (> 0); ignored when greedy.
        greedy: argmax decoding (evaluation).
        batch_size: rows (context x sample) per `generate` call; None = all at once.
        student_topk: also record the C likeliest ids of each step (0: none).
        context_seeds: per context, a seed for its samples (each `generate` call then holds
            one context's rows), so a context's completions do not depend on its neighbours
            (across processes); None: the global torch RNG, rows of several contexts per call.
    Returns:
        len(contexts) * samples_per_context completions, truncated after the first eos.
    """
    return [c for chunk in generate_completions(model, contexts, samples_per_context,
                                                max_new_tokens, eos_ids, pad_id, temperature,
                                                greedy, batch_size, student_topk,
                                                context_seeds)
            for c in chunk]  # fmt: skip


@torch.no_grad()
def generate_completions(
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
    """`sample_completions`, one `generate` call's completions at a time, as each call ends."""
    rows = [(c, ctx) for c, ctx in enumerate(contexts) for _ in range(samples_per_context)]
    size = batch_size or len(rows)
    was_training = model.training
    model.eval()
    try:
        for lo, hi, seed in _chunks(len(rows), size, samples_per_context, context_seeds):
            batch = rows[lo:hi]
            with _seeded(model, seed):
                new_B_N, logprobs_B_N, topk_B_N_C = _generate(
                    model, [ctx for _, ctx in batch], max_new_tokens, eos_ids, pad_id,
                    None if greedy else temperature, student_topk,
                )  # fmt: skip
            yield _truncate_at_eos(new_B_N, logprobs_B_N, [c for c, _ in batch], eos_ids, lo,
                                   topk_B_N_C)  # fmt: skip
    finally:
        model.train(was_training)


def _chunks(
    rows: int, size: int, per_context: int, seeds: Sequence[int] | None
) -> list[tuple[int, int, int | None]]:
    """(first row, end row, seed) of each `generate` call: `size` rows at a time, or with seeds
    `size` rows of one context at a time, each chunk seeded from its context's seed."""
    if seeds is None:
        return [(lo, min(lo + size, rows), None) for lo in range(0, rows, size)]
    return [(c * per_context + lo, c * per_context + min(lo + size, per_context), seed + lo)
            for c, seed in enumerate(seeds) for lo in range(0, per_context, size)]  # fmt: skip


@contextlib.contextmanager
def _seeded(model: PreTrainedModel, seed: int | None) -> Iterator[None]:
    """Sample from `seed` (global RNG state put back afterwards), or as is when None."""
    if seed is None:
        yield
        return
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed % (1 << 63))
        yield


def _generate(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float | None,
    topk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One `generate` call (temperature None = greedy): new ids [B, N], their log-probs, and the
    top-`topk` ids of each step [B, N, C] (None when topk is 0)."""
    ids_B_L, mask_B_L = _left_pad(contexts, pad_id)
    # Never run past the model's position table (padded width counts).
    room = max_positions(model) - ids_B_L.shape[1]
    if room < 1:
        raise ValueError(
            f"contexts of {ids_B_L.shape[1]} tokens leave no room in the model's "
            f"{max_positions(model)} positions"
        )
    record = _SampledLogprobs(topk)
    processors: list[LogitsProcessor] = [_KeepRawLogits(record)]
    if temperature is not None and temperature != 1.0:
        # Ours, after the recorder (generate would put its own before it); identical arithmetic.
        processors.append(TemperatureLogitsWarper(temperature))
    device = next(model.parameters()).device
    out = model.generate(  # type: ignore[operator]  # transformers' stub types it as a Tensor
        input_ids=ids_B_L.to(device),
        attention_mask=mask_B_L.to(device),
        do_sample=temperature is not None,
        max_new_tokens=min(max_new_tokens, room),
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        logits_processor=LogitsProcessorList(processors),
        stopping_criteria=StoppingCriteriaList([_GatherSampled(record)]),
        **_neutral_knobs(model, sampling=temperature is not None),
    )
    new_B_N = out[:, ids_B_L.shape[1] :]
    topk_B_N_C = record.topk_ids_B_N_C(new_B_N.shape[1])
    return (new_B_N.cpu(), record.logprobs_B_N(new_B_N.shape[1]).cpu(),
            None if topk_B_N_C is None else topk_B_N_C.cpu())  # fmt: skip


def roll_out(
    engine: RolloutEngine,
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    prefixes: Sequence[np.ndarray],
    cfg: RolloutConfig,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    student_topk: int = 0,
    on_finished: Callable[[list[tuple[int, TrainSequence]]], None] | None = None,
    prompt_seeds: Sequence[int] | None = None,
) -> list[TrainSequence]:
    """The step's rollouts: `cfg.samples_per_prompt` responses per prompt, each opening with its
    prompt's guidance prefix (empty for unguided prompts) and continued by the student.

    Args:
        engine: samples the student (`rollout_engines.make_engine(cfg)`).
        prompts, prefixes: token ids per prompt, aligned; a prefix holds no eos.
        max_new_tokens: the response budget; a prefix counts against it, so a guided response
            is never longer than an unguided one.
        eos_ids, pad_id: as in `sample_completions`; rows are generated `cfg.batch_size` at a
            time. Callers wrap the call in the student's autocast.
        student_topk: record the student's C likeliest ids at each sampled token (the
            `candidates` of `rkl_topk`; zeros on prefix tokens, which the student did not sample).
        on_finished: called with each group of (row, sequence) as the engine finishes it, while
            the rest is still sampling (the overlap with the teacher).
        prompt_seeds: per prompt, its sampling seed (`sample_completions`' context_seeds).
    Returns:
        len(prompts) * samples_per_prompt sequences, grouped by prompt, whatever order the
        engine finished them in.
    """
    contexts = [list(p) + prefix.tolist() for p, prefix in zip(prompts, prefixes, strict=True)]
    chunks = engine.sample(
        model,
        contexts,
        cfg.samples_per_prompt,
        max_new_tokens - min(int(p.size) for p in prefixes),
        eos_ids,
        pad_id,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        student_topk=student_topk,
        context_seeds=prompt_seeds,
    )
    sequences: dict[int, TrainSequence] = {}
    for chunk in chunks:
        finished = [(c.row, _sequence(c, prompts, prefixes, max_new_tokens)) for c in chunk]
        sequences.update(finished)
        if on_finished is not None:
            on_finished(finished)
    return [sequences[row] for row in sorted(sequences)]


def _sequence(
    c: Completion, prompts: Sequence[Sequence[int]], prefixes: Sequence[np.ndarray],
    max_new_tokens: int,
) -> TrainSequence:  # fmt: skip
    prompt, prefix = prompts[c.context_index], prefixes[c.context_index]
    response = np.concatenate([prefix, c.ids])[:max_new_tokens]
    behavior = np.concatenate([np.full(prefix.size, np.nan, np.float32), c.behavior_logprobs])
    cut = response.size < prefix.size + c.ids.size  # a long prefix left less room
    topk_ids = None
    if c.topk_ids is not None:
        pad = np.zeros((prefix.size, c.topk_ids.shape[1]), np.int64)
        topk_ids = np.concatenate([pad, c.topk_ids])[: response.size]
    return TrainSequence(
        prompt_index=c.context_index,
        context_len=len(prompt),
        ids=np.concatenate([np.asarray(prompt, np.int64), response]),
        prefix_len=int(prefix.size),
        behavior_logprobs=behavior[: response.size],
        finish_reason="length" if cut else c.finish_reason,
        student_topk_ids=topk_ids,
    )


def _neutral_knobs(model: PreTrainedModel, sampling: bool) -> dict[str, object]:
    """Values that switch off the logit processors a model's generation config may declare
    (instruct models ship e.g. temperature 0.7, top_k 20, repetition_penalty 1.05): `generate`
    runs those before ours, so the recorder would see processed logits, and the rollout would
    not sample the student's own distribution. Neutral values create no processor at all."""
    knobs: dict[str, object] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    if sampling:
        knobs.update(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0)
        if getattr(model.generation_config, "min_p", None) is not None:
            knobs["min_p"] = 0.0  # None would inherit the model's; 0 keeps every token
    return knobs


def max_positions(model: PreTrainedModel) -> int:
    """How many positions (context + new tokens) a row of `model` may hold: its config's
    `max_position_embeddings` (GPT-2's `n_positions`), or 2**30 when it declares neither.

    Every rollout engine refuses a context that leaves no room and stops new tokens here, since
    running past a learned or cached position table fails or silently degrades."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _truncate_at_eos(
    new_B_N: torch.Tensor,
    logprobs_B_N: torch.Tensor,
    context_index_B: Sequence[int],
    eos_ids: Sequence[int],
    first_row: int = 0,
    topk_B_N_C: torch.Tensor | None = None,
) -> list[Completion]:
    completions = []
    for row, context_index in enumerate(context_index_B):
        ids = new_B_N[row].numpy()
        eos_at = np.flatnonzero(np.isin(ids, list(eos_ids)))
        length = int(eos_at[0]) + 1 if eos_at.size else ids.size
        completions.append(
            Completion(
                context_index=context_index,
                row=first_row + row,
                ids=ids[:length].astype(np.int64),
                behavior_logprobs=logprobs_B_N[row, :length].numpy().astype(np.float32),
                finish_reason="eos" if eos_at.size else "length",
                topk_ids=None if topk_B_N_C is None else topk_B_N_C[row, :length].numpy(),
            )
        )
    return completions
