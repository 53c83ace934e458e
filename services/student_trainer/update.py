"""One optimizer step over a step's rollouts: micro-batched forward, loss, backward, clip, AdamW.

The loss normaliser is the number of trained tokens in the whole step, so the update does not
depend on how the rollouts are split into micro-batches (by count or by token budget,
`batch.plan_micro_batches`). A step whose loss or gradient is not finite is counted and
skipped, never applied. The student's log-probs come from its hidden states chunk by chunk
(`logprobs.py`), so no [micro, T, V] tensor exists; forwards run under the student's autocast,
backward outside it (`precision.py`). Under `train.parallel` each rank updates from its share
of the step's rollouts through the DDP / FSDP2 wrapper (`distributed.py`), and the step stays
one step: the normalizer, the clip norm and the metrics span every rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tropd.output_head import OutputHead, decoder_hidden
from tropd.teacher.client import ScoredSequence
from tropd.trainer.alignment import flat_response_positions
from tropd.trainer.batch import (
    MicroBatch,
    TrainSequence,
    collate,
    plan_micro_batches,
    trained_tokens,
)
from tropd.trainer.config import OptimConfig
from tropd.trainer.distributed import Ranks
from tropd.trainer.logprobs import chunk_positions, token_stats
from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputs,
    count_nonfinite,
    entropy_top_threshold,
    merge_metrics,
    summarize_metrics,
)
from tropd.trainer.precision import Precision
from tropd.trainer.start_anchor import Anchor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateResult:
    applied: bool
    grad_norm: float  # total L2 norm before clipping
    metrics: dict[str, float]


@dataclass(frozen=True)
class _Reader:
    """How the update reads the student: its output layer and positions per logits chunk."""

    model: PreTrainedModel
    head: OutputHead
    chunk: int
    device: torch.device
    ranks: Ranks

    def hidden(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Last hidden states, through the DDP / FSDP2 wrapper when there is one."""
        if self.ranks.module is not None:
            return self.ranks.module(**inputs)  # type: ignore[no-any-return]
        return decoder_hidden(self.model, **inputs)


def _student_side(
    reader: _Reader, mb: MicroBatch, read_topk: bool = True
) -> dict[str, torch.Tensor]:
    """Student log-probs of the response tokens (with grad), entropy, and with `read_topk` the
    log-probs at the teacher's top-k and own top-C ids, as [B, T] (and [B, T, K]) tensors, zero
    on padding."""
    device = reader.device
    hidden_B_L_D = reader.hidden(
        input_ids=mb.ids_B_L.to(device), attention_mask=mb.attention_B_L.to(device)
    )
    rows, width_L, dim = hidden_B_L_D.shape
    positions_N, valid_B_T = flat_response_positions(
        mb.starts_B.to(device), mb.lengths_B.to(device), mb.response_ids_B_T.shape[1], width_L
    )
    # Extra ids read in the same pass: the teacher's top-K, then the student's own top-C.
    extra = [t for t in (mb.teacher_topk_ids_B_T_K, mb.student_topk_ids_B_T_C)
             if t is not None and read_topk]  # fmt: skip
    stats = token_stats(
        reader.head,
        hidden_B_L_D.reshape(rows * width_L, dim),
        positions_N,
        mb.response_ids_B_T.to(device)[valid_B_T],
        torch.cat(extra, dim=-1).to(device)[valid_B_T] if extra else None,
        chunk=reader.chunk,
    )
    out = {
        "student_logprobs_B_T": _place(stats.logprobs_N, valid_B_T),
        "student_entropy_B_T": _place(stats.entropy_N, valid_B_T),
    }
    if stats.topk_logprobs_N_K is not None:
        k = 0 if mb.teacher_topk_ids_B_T_K is None else mb.teacher_topk_ids_B_T_K.shape[-1]
        if k:
            out["student_topk_logprobs_B_T_K"] = _place(stats.topk_logprobs_N_K[:, :k], valid_B_T)
        if mb.student_topk_ids_B_T_C is not None:
            out["student_cand_logprobs_B_T_C"] = _place(stats.topk_logprobs_N_K[:, k:], valid_B_T)
    return out


def _place(values_N: torch.Tensor, valid_B_T: torch.Tensor) -> torch.Tensor:
    """Per-token values [N, ...] back into a zero-padded [B, T, ...] tensor (differentiable)."""
    out = values_N.new_zeros((*valid_B_T.shape, *values_N.shape[1:]))
    out[valid_B_T] = values_N
    return out


def _step_entropy_threshold(
    reader: _Reader,
    plan: Sequence[list[int]],
    batch: Callable[[list[int]], MicroBatch],
    loss_cfg: LossConfig,
    precision: Precision,
) -> float | None:
    """`entropy_top20`'s cut over the whole step, so the selected tokens do not depend on the
    micro-batch split; it costs one extra no-grad forward, paid only when there are several.
    Across ranks the cut is taken over every rank's entropies (always: another rank may hold
    several micro-batches)."""
    ranks = reader.ranks
    if loss_cfg.method != "entropy_top20" or (len(plan) < 2 and not ranks.distributed):
        return None  # one micro-batch: the loss takes the cut over it, which is the step
    entropies, masks = [], []
    for rows in plan:
        mb = batch(rows)
        with torch.no_grad(), precision.autocast():
            entropies.append(_student_side(reader, mb)["student_entropy_B_T"])
        masks.append(mb.response_mask_B_T.to(reader.device))
    if not ranks.distributed:
        return entropy_top_threshold(entropies, masks, loss_cfg.entropy_top_fraction)
    for _ in range(len(plan), ranks.max(len(plan))):  # FSDP2: as many forwards as every rank
        with torch.no_grad(), precision.autocast():
            _student_side(reader, batch(plan[-1]))
    mine = torch.cat([e.detach().float()[m].cpu() for e, m in zip(entropies, masks, strict=True)])
    every = torch.cat(ranks.gather(mine))
    return entropy_top_threshold([every], [torch.ones_like(every, dtype=torch.bool)],
                                 loss_cfg.entropy_top_fraction)  # fmt: skip


def _start_logprobs(reader: _Reader | None, mb: MicroBatch) -> torch.Tensor | None:
    """The frozen starting student's log-probs of the response tokens [B, T] (the KL anchor),
    or None without an anchor this step."""
    if reader is None:
        return None
    with torch.no_grad():
        return _student_side(reader, mb, read_topk=False)["student_logprobs_B_T"]


def _loss_inputs(
    mb: MicroBatch,
    student: dict[str, torch.Tensor],
    uniform_B_T: torch.Tensor,
    device: torch.device,
    entropy_threshold: float | None,
    start_B_T: torch.Tensor | None,
    anchor_coef: float,
) -> LossInputs:
    def dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return LossInputs(
        student_logprobs_B_T=student["student_logprobs_B_T"],
        behavior_logprobs_B_T=dev(mb.behavior_logprobs_B_T),
        teacher_logprobs_B_T=dev(mb.teacher_logprobs_B_T),
        teacher_topk_ids_B_T_K=dev(mb.teacher_topk_ids_B_T_K),
        teacher_topk_logprobs_B_T_K=dev(mb.teacher_topk_logprobs_B_T_K),
        student_topk_logprobs_B_T_K=student.get("student_topk_logprobs_B_T_K"),
        student_cand_logprobs_B_T_C=student.get("student_cand_logprobs_B_T_C"),
        teacher_cand_logprobs_B_T_C=dev(mb.teacher_cand_logprobs_B_T_C),
        teacher_entropy_B_T=dev(mb.teacher_entropy_B_T),
        student_entropy_B_T=student["student_entropy_B_T"],
        trust_uniform_B_T=uniform_B_T.to(device),
        response_mask_B_T=mb.response_mask_B_T.to(device),
        prefix_mask_B_T=dev(mb.prefix_mask_B_T),
        student_entropy_threshold=entropy_threshold,
        start_logprobs_B_T=start_B_T,
        anchor_coef=anchor_coef,
    )


def apply_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    sequences: Sequence[TrainSequence],
    scores: Sequence[ScoredSequence | None],
    loss_cfg: LossConfig,
    optim: OptimConfig,
    trust_generator: torch.Generator,
    pad_id: int,
    precision: Precision | None = None,
    ranks: Ranks | None = None,
    trust_seeds: Sequence[int] | None = None,
    anchor: Anchor | None = None,
) -> UpdateResult:
    """Accumulate gradients over micro-batches, then clip and step (or skip when non-finite).

    Args:
        sequences, scores: the step's rollouts and their teacher results, aligned.
        optim: grad_clip, the micro-batch plan (micro_batch_size, micro_batch_tokens) and
            logits_chunk_mib are read here; the optimizer already holds lr.
        trust_generator: seeded per step; the uniforms for the trust test are drawn for all rows
            at once, so they do not depend on the micro-batch split.
        precision: autocast for the forwards, and float16's loss scaling (None: float32).
        ranks: across processes (`train.parallel`), this rank's rollouts are its share: the
            normalizer is every rank's token count, the clip norm every rank's gradient, the
            metrics every rank's, and every rank runs as many micro-batches as the busiest.
        trust_seeds: per rollout, a seed for its trust-test uniforms (across processes, where a
            row's uniforms must not depend on which rank holds it); None: `trust_generator`.
        anchor: the frozen starting student and this step's weight on the KL to it
            (`loss.anchor_kl`); None: no anchor term.
    Returns:
        Whether the step was applied, the pre-clip gradient norm, and the merged loss metrics.
    """
    precision = precision or Precision()
    ranks = ranks or Ranks.single()
    head = OutputHead.of(model)
    reader = _Reader(model, head, chunk_positions(head.vocab_size, optim.logits_chunk_mib),
                     next(model.parameters()).device, ranks)  # fmt: skip
    start = (None if anchor is None or anchor.coef == 0 else
             _Reader(anchor.model, OutputHead.of(anchor.model), reader.chunk, reader.device,
                     Ranks.single()))  # fmt: skip
    loss_fn = LOSSES[loss_cfg.method]
    normalizer = float(max(ranks.sum(trained_tokens(sequences)), 1))
    uniform_N_T = _trust_uniforms(sequences, trust_generator, trust_seeds)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parts: list[dict[str, float]] = []
    plan = plan_micro_batches(sequences, optim.micro_batch_size, optim.micro_batch_tokens)

    def batch(rows: list[int]) -> MicroBatch:  # collated when used: one micro-batch at a time
        return collate([sequences[i] for i in rows], [scores[i] for i in rows], pad_id)

    threshold = _step_entropy_threshold(reader, plan, batch, loss_cfg, precision)
    # Across ranks every rank runs the busiest rank's count of forwards and backwards (FSDP2's
    # collectives pair up one to one); the extra ones repeat a micro-batch with weight 0.
    rounds = ranks.max(len(plan))
    for i in range(rounds):
        rows = plan[min(i, len(plan) - 1)]
        mb = batch(rows)
        with precision.autocast():
            student = _student_side(reader, mb)
        uniform_B_T = uniform_N_T[torch.tensor(rows), : mb.response_ids_B_T.shape[1]]
        with precision.autocast():
            start_B_T = _start_logprobs(start, mb)
        inputs = _loss_inputs(mb, student, uniform_B_T, reader.device, threshold, start_B_T,
                              0.0 if anchor is None else anchor.coef)  # fmt: skip
        loss, metrics = loss_fn(inputs, loss_cfg, normalizer)
        if ranks.distributed:  # DDP and FSDP2 average gradients over ranks; the normalizer
            loss = loss * (ranks.world if i < len(plan) else 0.0)  # already counts them all
        precision.backward(loss)
        if i < len(plan):
            parts.append(
                {**metrics, "nonfinite_inputs": float(sum(count_nonfinite(inputs).values()))}
            )
    precision.unscale(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if ranks.distributed:
        grad_norm = ranks.clip_grad_norm(params, optim.grad_clip)
        parts = [part for rank_parts in ranks.gather(parts) for part in rank_parts]
    else:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip))
    merged = summarize_metrics(merge_metrics(parts))
    loss_total = merged.get("loss_total", 0.0)
    applied = math.isfinite(grad_norm) and math.isfinite(loss_total)
    if not applied:
        log.warning(
            "skipping step: non-finite loss %.4g or gradient norm %.4g (%d non-finite inputs)",
            loss_total,
            grad_norm,
            merged.get("nonfinite_inputs", 0),
        )
    precision.step(optimizer, applied)
    optimizer.zero_grad(set_to_none=True)  # frees a weights-sized buffer before the rollout
    return UpdateResult(applied, grad_norm, merged)


def set_learning_rate(optimizer: torch.optim.Optimizer, optim: OptimConfig, step: int) -> float:
    """Set step `step`'s learning rate (0-based): a linear warm-up from `lr / warmup_steps` to
    `lr` over `optim.warmup_steps` steps, then `lr`; returns it.

    By hand rather than torch's LambdaLR: the rate is a function of the step alone, which every
    checkpoint (plain or DCP) already holds, so a resumed run needs no scheduler state.
    """
    scale = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    for group in optimizer.param_groups:
        group["lr"] = optim.lr * scale
    return optim.lr * scale


def _trust_uniforms(
    sequences: Sequence[TrainSequence], generator: torch.Generator, seeds: Sequence[int] | None
) -> torch.Tensor:
    """The trust test's uniforms [N, T]: one draw for all rows from `generator`, or (across
    processes) each row's own from its seed, so they do not depend on the rank or the width."""
    width_T = max(s.response_len for s in sequences)
    if seeds is None:
        return torch.rand((len(sequences), width_T), generator=generator)
    uniform_N_T = torch.zeros((len(sequences), width_T))
    for row, (seq, seed) in enumerate(zip(sequences, seeds, strict=True)):
        row_gen = torch.Generator().manual_seed(seed)
        uniform_N_T[row, : seq.response_len] = torch.rand(seq.response_len, generator=row_gen)
    return uniform_N_T
