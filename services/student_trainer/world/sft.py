"""Supervised fine-tuning and greedy evaluation for the built-in world's tiny models.

Knows the addition task's problems and styles, a tokenizer and a causal LM; nothing about
manifests or folders. Training is plain teacher forcing on full formatted sequences (prompt,
completion, eos) with the loss on completion tokens only, AdamW, a linear warm-up then a
cosine decay to a fraction of the peak learning rate, and gradient clipping. The decay matters:
at a constant rate the tiny models' accuracy swings by tens of points between nearby steps, so a
pinned step count would pin a lucky or unlucky moment rather than a stage of training. With one
torch thread and a fixed seed it is bit-reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tropd.trainer.tasks.addition import STYLES, AdditionTask, Problem, completion_text
from tropd.trainer.tasks.base import Example

IGNORE_INDEX = -100  # label value the HF causal-LM loss skips


@dataclass(frozen=True)
class SftBatchSource:
    """Every train problem encoded in every style; sampling a batch is pure indexing.

    ids_S_N_T: token ids [styles, problems, positions] (bos, prompt, completion, eos).
    labels_S_N_T: the same with prompt positions set to IGNORE_INDEX.
    """

    styles: tuple[str, ...]
    ids_S_N_T: torch.Tensor
    labels_S_N_T: torch.Tensor


def encode_problems(
    task: AdditionTask,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    styles: Sequence[str],
) -> SftBatchSource:
    examples = [task.example(problem) for problem in problems]
    prompt_ids_N = tokenizer([e.prompt for e in examples])["input_ids"]
    rows_S: list[torch.Tensor] = []
    labels_S: list[torch.Tensor] = []
    for style_name in styles:
        completions = [completion_text(p, task.digits, STYLES[style_name]) for p in problems]
        completion_ids_N = tokenizer(completions, add_special_tokens=False)["input_ids"]
        rows, labels = [], []
        for prompt_ids, completion_ids in zip(prompt_ids_N, completion_ids_N, strict=True):
            targets = [*completion_ids, tokenizer.eos_token_id]
            rows.append(prompt_ids + targets)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + targets)
        rows_S.append(torch.tensor(rows, dtype=torch.long))
        labels_S.append(torch.tensor(labels, dtype=torch.long))
    return SftBatchSource(tuple(styles), torch.stack(rows_S), torch.stack(labels_S))


@dataclass(frozen=True)
class SftSettings:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    seed: int
    final_lr_fraction: float  # learning rate at the last step, relative to the peak
    style_mix: Mapping[str, float]  # style name -> sampling weight


def lr_factor(step: int, settings: SftSettings) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warm-up, cosine decay."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    decay_steps = max(1, settings.steps - 1 - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / decay_steps)
    floor = settings.final_lr_fraction
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_sft(
    model: PreTrainedModel, source: SftBatchSource, settings: SftSettings, progress: bool = True
) -> list[float]:
    """Train `model` in place; returns the loss of every step.

    Each row of a batch draws a problem uniformly from the pool and a style from `style_mix`,
    both from one seeded generator, so a run depends on nothing but its settings.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    weights_S = torch.tensor([settings.style_mix.get(s, 0.0) for s in source.styles])
    num_problems = source.ids_S_N_T.shape[1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    model.train()
    losses = []
    for _ in tqdm(range(settings.steps), desc="sft", disable=not progress, leave=False):
        problem_B = torch.randint(num_problems, (settings.batch_size,), generator=generator)
        style_B = torch.multinomial(weights_S, settings.batch_size, True, generator=generator)
        loss = model(
            input_ids=source.ids_S_N_T[style_B, problem_B],
            labels=source.labels_S_N_T[style_B, problem_B],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 256,
) -> list[str]:
    """Greedy-decode each prompt; returns decoded completions, special tokens skipped."""
    completions: list[str] = []
    for start in range(0, len(examples), batch_size):
        prompts = [e.prompt for e in examples[start : start + batch_size]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        out_B_T = model.generate(  # type: ignore[operator]  # transformers' stub: a Tensor
            **encoded,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_B_T = out_B_T[:, encoded["input_ids"].shape[1] :]
        completions.extend(tokenizer.batch_decode(new_B_T, skip_special_tokens=True))
    return completions
