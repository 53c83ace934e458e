"""The `paged` rollout engine: transformers' continuous batching with paged attention.

Every row is one request of a `ContinuousBatchingManager` (transformers 5,
`model.init_continuous_batching`): up to `batch_size` rows decode together, and a row that stops
frees its cache pages and its slot for a waiting one at once, where `generate` holds every row
of a call until its longest is done. The manager runs the trained module itself (no copy of the
weights, so `load_weights` does nothing) in a background thread; rows come back as they finish,
in groups of `GROUP_ROWS` in finish order.

Behaviour log-probs: continuous batching reports log softmax of the logits it sampled from,
after its logit processors. With no processor (temperature 1, or greedy) that is our
definition (the untempered student) and is used as is; at any other temperature it is the
tempered log-prob, so each group is recomputed with a teacher-forced forward
(`rollout_engines.teacher_forced_logprobs`) while the sampling loop is paused.

Not inherited by the background thread: the caller's autocast (thread-local), so it samples in
the weights' own dtype. Seeding: the manager draws its seed from the global torch RNG and
re-seeds it, so a seeded run samples the same rows every time; all rows are queued before the
loop starts, so its schedule does not depend on timing.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import continuous_api

from tropd.trainer.rollout import Completion, max_positions
from tropd.trainer.rollout_engines import teacher_forced_logprobs

GROUP_ROWS = 16  # finished rows per group handed back (and per log-prob recompute)
PAGE_SIZE = 64  # tokens per cache page: short rollouts waste less of their last page


class PagedEngine:
    name = "paged"

    def load_weights(self, model: PreTrainedModel) -> None:
        """Nothing: the manager runs the trained module itself."""

    @torch.no_grad()
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
        # The config refuses both pairings first (RunConfig).
        if student_topk:
            raise ValueError("the paged engine does not record the student's top-k ids")
        if context_seeds is not None:
            raise ValueError("the paged engine cannot seed each context's samples on its own")
        rows = [(c, list(ctx)) for c, ctx in enumerate(contexts)
                for _ in range(samples_per_context)]  # fmt: skip
        limit = max_positions(model)
        budgets = [min(max_new_tokens, limit - len(ctx)) for _, ctx in rows]
        if min(budgets) < 1:
            raise ValueError(f"a context of {max(len(ctx) for _, ctx in rows)} tokens leaves no "
                             f"room in the model's {limit} positions")  # fmt: skip
        processed = not greedy and temperature != 1.0  # reported log-probs are tempered
        was_training = model.training
        generation = _generation_config(eos_ids, pad_id, max_new_tokens, temperature, greedy)
        manager = model.init_continuous_batching(  # type: ignore[operator]
            generation_config=generation,
            continuous_batching_config=_cache_config(rows, max_new_tokens, batch_size, processed),
        )
        try:
            for row, ((_, ctx), budget) in enumerate(zip(rows, budgets, strict=True)):
                manager.add_request(ctx, request_id=str(row), max_new_tokens=budget)
            manager.start()  # after queueing every row: the schedule depends on them only
            group: list[Completion] = []
            for done in range(len(rows)):
                group.append(_completion(_next_finished(manager), rows, eos_ids))
                if len(group) == GROUP_ROWS or done == len(rows) - 1:
                    if processed:
                        with manager.pause():  # the module is ours alone meanwhile
                            group = _with_untempered_logprobs(model, contexts, group, pad_id)
                    yield group
                    group = []
        finally:
            with _no_full_collection(model.device.type == "cpu"):
                manager.stop(block=True)
                manager.destroy()
            model.train(was_training)


@contextmanager
def _no_full_collection(skip: bool) -> Iterator[None]:
    """Skip the `gc.collect()` the manager runs on stop (twice: `stop` and its batch processor's
    `__del__`). It is there to free CUDA graphs; on CPU there are none, and in a trainer process
    (torch, transformers, datasets loaded) each full collection took ~1 s, more than a whole
    demo rollout. transformers offers no switch, so its module's `gc` is swapped meanwhile."""
    if not skip:
        yield
        return
    real = continuous_api.gc
    continuous_api.gc = types.SimpleNamespace(collect=lambda *a: 0)  # type: ignore[assignment]
    try:
        yield
    finally:
        continuous_api.gc = real


def _generation_config(
    eos_ids: Sequence[int], pad_id: int, max_new_tokens: int, temperature: float, greedy: bool
) -> GenerationConfig:
    # Neutral knobs: no top-k/top-p/penalty processor, whatever the model's own config says.
    return GenerationConfig(
        do_sample=not greedy, temperature=1.0 if greedy else temperature, top_k=0, top_p=1.0,
        repetition_penalty=1.0, eos_token_id=list(eos_ids), pad_token_id=pad_id,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip


def _cache_config(
    rows: Sequence[tuple[int, list[int]]],
    max_new_tokens: int,
    batch_size: int | None,
    processed: bool,
) -> ContinuousBatchingConfig:
    """A cache that holds `batch_size` of the longest rows at once, sized from the rows rather
    than from free memory (the manager's default takes most of the device's memory)."""
    concurrent = min(len(rows), batch_size or len(rows))
    longest = max(len(ctx) for _, ctx in rows) + max_new_tokens
    return ContinuousBatchingConfig(
        page_size=PAGE_SIZE,
        num_blocks=concurrent * math.ceil(longest / PAGE_SIZE),
        max_batch_tokens=max(concurrent, 512),  # decode all live rows in one forward
        max_requests_per_batch=concurrent,
        return_logprobs=not processed,
        max_memory_percent=1.0,  # the cache is sized above; let it use what it needs
    )


def _next_finished(manager: object) -> object:
    """The next finished request's output; raises if the generation loop died."""
    while True:
        result = manager.get_result(timeout=1.0)  # type: ignore[attr-defined]
        if result is None:
            if not manager.is_running():  # type: ignore[attr-defined]
                error = manager.background_thread_status.fatal_error  # type: ignore[attr-defined]
                raise RuntimeError(f"continuous batching stopped early: {error}") from error
            continue
        if result.error is not None:
            raise RuntimeError(f"continuous batching failed row {result.request_id}: "
                               f"{result.error}")  # fmt: skip
        if result.is_finished():
            return result


def _completion(result: object, rows: Sequence[tuple[int, list[int]]],
                eos_ids: Sequence[int]) -> Completion:  # fmt: skip
    row = int(result.request_id)  # type: ignore[attr-defined]
    ids = np.asarray(result.generated_tokens, np.int64)  # type: ignore[attr-defined]
    logprobs = np.asarray(result.logprobs, np.float32)  # type: ignore[attr-defined]
    ended = ids.size > 0 and int(ids[-1]) in set(eos_ids)
    return Completion(
        context_index=rows[row][0], row=row, ids=ids,
        behavior_logprobs=logprobs if logprobs.size == ids.size else np.zeros(0, np.float32),
        finish_reason="eos" if ended else "length",
    )  # fmt: skip


def _with_untempered_logprobs(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    group: list[Completion],
    pad_id: int,
) -> list[Completion]:
    logprobs = teacher_forced_logprobs(model, contexts, group, pad_id)
    return [
        Completion(c.context_index, c.row, c.ids, lp, c.finish_reason)
        for c, lp in zip(group, logprobs, strict=True)
    ]
