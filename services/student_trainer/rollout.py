"""Student rollouts: sample with HF `generate` (KV cache) and record behaviour log-probs.

Token ids only; tokenisation and verification live in the loop and the task. The behaviour
log-prob of a token is log π_S(x_t | c_t) under the *untempered* student at sampling time, the
`lp_S_old` of the trust test, computed from the raw logits `generate` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedModel

from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import RolloutConfig


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a context."""

    context_index: int  # which context (of the call's list) it continues
    ids: np.ndarray  # int64 [m], sampled tokens, ending with eos when one was emitted
    behavior_logprobs: np.ndarray  # float32 [m]
    finish_reason: str  # "eos" (ends with an eos id) or "length" (ran out of new tokens)


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
) -> list[Completion]:
    """Sample `samples_per_context` completions for each context (prompt, maybe + guidance prefix).

    Args:
        model: the student, in eval mode during the call (dropout off), restored afterwards.
        contexts: token ids per context; lengths may differ (left-padded internally).
        samples_per_context: completions per context, grouped in context order.
        max_new_tokens: hard cap; a completion without eos stops there.
        eos_ids: every id that ends a completion (the tokenizer's eos, the generation
            config's, the chat template's end-of-turn token).
        pad_id: the tokenizer's padding id.
        temperature: sampling temperature (> 0); ignored when greedy.
        greedy: argmax decoding (evaluation).
        batch_size: contexts per `generate` call (None: all at once).
    Returns:
        len(contexts) * samples_per_context completions, truncated after the first eos.
    """
    if batch_size is not None and len(contexts) > batch_size:
        completions: list[Completion] = []
        for lo in range(0, len(contexts), batch_size):
            part = sample_completions(model, contexts[lo : lo + batch_size], samples_per_context,
                                      max_new_tokens, eos_ids, pad_id, temperature, greedy)
            completions.extend(replace(c, context_index=c.context_index + lo) for c in part)
        return completions
    ids_B_L, mask_B_L = _left_pad(contexts, pad_id)
    # Never run past the model's position table (padded width counts).
    room = _max_positions(model) - ids_B_L.shape[1]
    if room < 1:
        raise ValueError(
            f"contexts of {ids_B_L.shape[1]} tokens leave no room in the model's "
            f"{_max_positions(model)} positions"
        )
    max_new_tokens = min(max_new_tokens, room)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = model.generate(  # type: ignore[operator]  # transformers' stub types it as a Tensor
        input_ids=ids_B_L.to(device),
        attention_mask=mask_B_L.to(device),
        do_sample=not greedy,
        num_return_sequences=samples_per_context,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        output_logits=True,
        return_dict_in_generate=True,
        **sampling,
    )
    model.train(was_training)
    new_B_N = out.sequences[:, ids_B_L.shape[1] :]
    # generate returns the raw (unprocessed) logits of every step: [B, V] per new position.
    logits_B_N_V = torch.stack(out.logits, dim=1).float()
    logprobs_B_N = torch.log_softmax(logits_B_N_V, dim=-1).gather(-1, new_B_N.unsqueeze(-1))
    return _truncate_at_eos(
        new_B_N.cpu(), logprobs_B_N.squeeze(-1).cpu(), samples_per_context, eos_ids
    )


def roll_out(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    prefixes: Sequence[np.ndarray],
    cfg: RolloutConfig,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
) -> list[TrainSequence]:
    """The step's rollouts: `cfg.samples_per_prompt` responses per prompt, each opening with its
    prompt's guidance prefix (empty for unguided prompts) and continued by the student.

    Args:
        prompts, prefixes: token ids per prompt, aligned; a prefix holds no eos.
        max_new_tokens: the response budget; a prefix counts against it, so a guided response
            is never longer than an unguided one.
        eos_ids, pad_id: as `sample_completions` takes them.
    Returns:
        len(prompts) * samples_per_prompt sequences, grouped by prompt.
    """
    contexts = [list(p) + prefix.tolist() for p, prefix in zip(prompts, prefixes, strict=True)]
    completions = sample_completions(
        model,
        contexts,
        cfg.samples_per_prompt,
        max_new_tokens - min(int(p.size) for p in prefixes),
        eos_ids,
        pad_id,
        temperature=cfg.temperature,
    )
    sequences = []
    for c in completions:
        prompt, prefix = prompts[c.context_index], prefixes[c.context_index]
        response = np.concatenate([prefix, c.ids])[:max_new_tokens]
        # Cut at the budget, a response that had not ended by then ran out of tokens.
        finished = c.finish_reason == "eos" and response.size == prefix.size + c.ids.size
        behavior = np.concatenate([np.full(prefix.size, np.nan, np.float32), c.behavior_logprobs])
        sequences.append(
            TrainSequence(
                prompt_index=c.context_index,
                context_len=len(prompt),
                ids=np.concatenate([np.asarray(prompt, np.int64), response]),
                prefix_len=int(prefix.size),
                behavior_logprobs=behavior[: response.size],
                finish_reason="eos" if finished else "length",
            )
        )
    return sequences


def _max_positions(model: PreTrainedModel) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _truncate_at_eos(
    new_B_N: torch.Tensor, logprobs_B_N: torch.Tensor, samples: int, eos_ids: Sequence[int]
) -> list[Completion]:
    completions = []
    for row in range(new_B_N.shape[0]):
        ids = new_B_N[row].numpy()
        eos_at = np.flatnonzero(np.isin(ids, list(eos_ids)))
        length = int(eos_at[0]) + 1 if eos_at.size else ids.size
        completions.append(
            Completion(
                context_index=row // samples,
                ids=ids[:length].astype(np.int64),
                behavior_logprobs=logprobs_B_N[row, :length].numpy().astype(np.float32),
                finish_reason="eos" if eos_at.size else "length",
            )
        )
    return completions
