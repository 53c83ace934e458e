"""In-process `transformers` backend: one causal LM, scoring and sampling on token ids.

Boundary: receives already-validated tasks (ids in range, spans in range, k within caps) and
returns numpy arrays; knows nothing about gRPC, callers or queues. Every public call runs under
`torch.inference_mode` on the single worker thread the scheduler owns.

Scoring runs the decoder body once per batch and applies the output layer only to the hidden
states of scored positions, gathered across the batch, in chunks of `chunk_size` positions with
float32 logits: the `[batch, seq, vocab]` logits are never materialised.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.output_head import OutputHead
from tropd.teacher.backends.base import BackendInfo, GenerateTask, ScoreTask
from tropd.teacher.backends.hf_scoring import ScoreRequestShape, score_positions
from tropd.teacher.fingerprint import fingerprint_of
from tropd.wire.types import Generation, ScoredSequence

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFOptions(BaseModel):
    """Options of the `hf` backend (what `load_backend("hf", **options)` accepts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: str = Field(description="save_pretrained folder, or a hub id where online")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    device: str = Field("cpu", description='torch device: "cpu", "cuda", "cuda:1"')
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    chunk_size: int = Field(1024, ge=1, description="scored positions per output-layer chunk")
    max_sequence_length: int | None = Field(
        None, ge=2, description="lower the model's max_position_embeddings"
    )
    attn_implementation: str | None = Field(None, description='e.g. "sdpa", "eager"')


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", index)
    return device


class HFBackend:
    """A `transformers` causal LM behind the `Backend` protocol (see teacher.backends.base)."""

    def __init__(self, options: HFOptions) -> None:
        """Load model and tokenizer; nothing runs on the device until `warmup`.

        Args:
            options: validated backend options.
        Raises:
            ValueError: bad device or sequence-length override.
            OSError: the model folder or hub id cannot be loaded.
        """
        self.options = options
        path = options.model_path
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            # transformers would read a missing folder as a malformed hub id.
            raise FileNotFoundError(f"model folder {path} does not exist")
        self.device = _resolve_device(options.device)
        dtype = "auto" if options.dtype == "auto" else _DTYPES[options.dtype]
        extra: dict[str, Any] = {}
        if options.attn_implementation:
            extra["attn_implementation"] = options.attn_implementation
        self.tokenizer = AutoTokenizer.from_pretrained(
            options.model_path, revision=options.revision
        )
        model = AutoModelForCausalLM.from_pretrained(
            options.model_path, revision=options.revision, dtype=dtype, **extra
        )
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers stub
        self.body = self.model.base_model
        self.head = OutputHead.of(self.model)
        self._cache_kwarg = _cache_kwarg(self.body)
        self._info = self._describe()
        logger.info("loaded %s: %s", options.model_path, self._info)

    def _describe(self) -> BackendInfo:
        config = self.model.config
        model_max = getattr(config, "max_position_embeddings", None)
        limit = self.options.max_sequence_length or model_max
        if limit is None:
            raise ValueError("model config has no max_position_embeddings: set max_sequence_length")
        if model_max is not None and limit > model_max:
            raise ValueError(
                f"max_sequence_length {limit} exceeds the model's max_position_embeddings "
                f"{model_max}"
            )
        return BackendInfo(
            model_id=self.options.model_path,
            revision=self.options.revision or "",
            backend="hf",
            dtype=str(self.model.dtype).removeprefix("torch."),
            device=str(self.device),
            vocab_size=self.head.vocab_size,
            max_sequence_length=int(limit),
            tokenizer=fingerprint_of(self.tokenizer),
        )

    def info(self) -> BackendInfo:
        """What this backend serves: model, dtype, device, vocab size, limits, tokenizer."""
        return self._info

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run a small score and generate, and check the output-layer path against the model.

        Raises:
            RuntimeError: the model's own logits differ from the backend's head path (a head
                transform this backend does not know about).
        """
        n = min(8, self._info.max_sequence_length)
        ids = np.arange(n, dtype=np.int32) % self._info.tokenizer.vocab_size
        self.head.check_against_model(self.model, torch.as_tensor(ids, device=self.device))
        self.score([ScoreTask(ids, 1, n, top_k=2, want_entropy=True, want_rank=True)])
        self.generate([GenerateTask(ids[:2], max_new_tokens=2, seed=0)])

    def _body(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """Decoder body forward: last hidden states [B, T, D] and the KV cache (or None)."""
        out = self.body(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=cache is not None,
            **{self._cache_kwarg: cache},
        )
        return out.last_hidden_state, getattr(out, self._cache_kwarg, None)

    @torch.inference_mode()
    def score(self, tasks: Sequence[ScoreTask]) -> list[ScoredSequence]:
        """Score a batch; see `Backend.score`. Right-pads, one body forward, chunked head.

        Args:
            tasks: validated tasks; each needs hidden states up to position end - 2 only.
        Returns:
            One ScoredSequence per task, in order, float32 / int32 arrays of end - start rows.
        """
        if not tasks:
            return []
        # Positions >= end - 1 never feed a scored row, so they are not even run.
        lengths = [t.end - 1 for t in tasks]
        width = max(lengths)
        ids_B_T = np.zeros((len(tasks), width), dtype=np.int64)
        mask_B_T = np.zeros((len(tasks), width), dtype=np.int64)
        for b, (task, n) in enumerate(zip(tasks, lengths, strict=True)):
            ids_B_T[b, :n] = task.ids[:n]
            mask_B_T[b, :n] = 1
        # Right padding: real tokens sit at positions 0..n-1 and never attend to the pads.
        positions_B_T = np.tile(np.arange(width), (len(tasks), 1))
        hidden_B_T_D, _ = self._body(*self._to_device(ids_B_T, mask_B_T, positions_B_T))
        rows = np.concatenate([np.full(t.num_scored, b) for b, t in enumerate(tasks)])
        cols = np.concatenate([np.arange(t.start - 1, t.end - 1) for t in tasks])
        hidden_N_D = hidden_B_T_D[self._index(rows), self._index(cols)]
        del hidden_B_T_D
        shape = ScoreRequestShape.of(tasks, self.head.vocab_size)
        return score_positions(self.head, hidden_N_D, tasks, shape, self.options.chunk_size)

    def _to_device(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.as_tensor(a, device=self.device) for a in arrays]

    def _index(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def generate(self, tasks: Sequence[GenerateTask]) -> list[Generation]:
        """Sample continuations with a KV cache; see `Backend.generate`.

        Prompts are left-padded (masked, positions counted from each prompt's first token).
        Each task draws from its own CPU `torch.Generator`, one uniform per sampled token, so
        the same seed and prompt give the same tokens whatever else shares the batch (up to
        float ties). Temperature 0 is greedy; log-probs are of the untempered distribution.

        Args:
            tasks: validated tasks (prompt + max_new_tokens within the sequence limit).
        Returns:
            One Generation per task, in order.
        """
        if not tasks:
            return []
        sampler = _Sampler(tasks, self.device)
        width = max(len(t.prompt) for t in tasks)
        ids_B_T = np.zeros((len(tasks), width), dtype=np.int64)
        mask_B_T = np.zeros((len(tasks), width), dtype=np.int64)
        for b, task in enumerate(tasks):
            ids_B_T[b, width - len(task.prompt) :] = task.prompt
            mask_B_T[b, width - len(task.prompt) :] = 1
        positions_B_T = np.clip(np.cumsum(mask_B_T, axis=1) - 1, 0, None)
        ids, mask, positions = self._to_device(ids_B_T, mask_B_T, positions_B_T)
        cache = self._new_cache()
        hidden_B_T_D, cache = self._body(ids, mask, positions, cache)
        for _ in range(max(t.max_new_tokens for t in tasks)):
            logits_B_V = self.head.logits(hidden_B_T_D[:, -1])
            tokens_B = sampler.step(logits_B_V)
            if sampler.all_done:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            hidden_B_T_D, cache = self._body(tokens_B[:, None], mask, positions, cache)
        return sampler.outputs()

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)


def _cache_kwarg(body: torch.nn.Module) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name is deprecated).
    params = inspect.signature(body.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Sampler:
    """Per-task token choice, stop handling and bookkeeping for one `generate` call."""

    def __init__(self, tasks: Sequence[GenerateTask], device: torch.device) -> None:
        self.tasks = tasks
        self.device = device
        self.generators = [
            torch.Generator().manual_seed(secrets.randbits(63) if t.seed is None else t.seed)
            for t in tasks
        ]
        temps = [t.temperature if t.temperature > 0 else 1.0 for t in tasks]
        self.temperature_B = torch.tensor(temps, dtype=torch.float32, device=device)
        self.top_p_B = torch.tensor([t.top_p for t in tasks], dtype=torch.float32, device=device)
        self.greedy_B = torch.tensor([t.temperature <= 0 for t in tasks], device=device)
        self.stop = [set(t.stop_ids) for t in tasks]
        self.ids: list[list[int]] = [[] for _ in tasks]
        self.logprobs: list[list[float]] = [[] for _ in tasks]
        self.finish: list[str | None] = [None] * len(tasks)

    @property
    def all_done(self) -> bool:
        return all(f is not None for f in self.finish)

    def step(self, logits_B_V: torch.Tensor) -> torch.Tensor:
        """Choose one token per row from float32 logits; record it for unfinished tasks."""
        u_B = torch.tensor(self._uniforms(), dtype=torch.float32, device=self.device)
        sampled_B = _sample_top_p(logits_B_V / self.temperature_B[:, None], self.top_p_B, u_B)
        tokens_B = torch.where(self.greedy_B, logits_B_V.argmax(dim=-1), sampled_B)
        logprobs_B = torch.log_softmax(logits_B_V, dim=-1).gather(1, tokens_B[:, None])[:, 0]
        pairs = zip(tokens_B.tolist(), logprobs_B.tolist(), strict=True)
        for b, (token, logprob) in enumerate(pairs):
            if self.finish[b] is not None:
                continue
            self.ids[b].append(token)
            self.logprobs[b].append(logprob)
            if token in self.stop[b]:
                self.finish[b] = "stop"
            elif len(self.ids[b]) >= self.tasks[b].max_new_tokens:
                self.finish[b] = "length"
        return tokens_B

    def _uniforms(self) -> list[float]:
        # Only rows that sample consume a uniform: a task's random stream then depends on its
        # own steps alone, never on how long its batch-mates run.
        return [
            float(torch.rand((), generator=g)) if done is None and t.temperature > 0 else 0.0
            for g, done, t in zip(self.generators, self.finish, self.tasks, strict=True)
        ]

    def outputs(self) -> list[Generation]:
        return [
            Generation(
                ids=np.asarray(ids, dtype=np.int32),
                logprobs=np.asarray(lps, dtype=np.float32),
                finish_reason=finish or "length",
            )
            for ids, lps, finish in zip(self.ids, self.logprobs, self.finish, strict=True)
        ]


def _sample_top_p(
    logits_B_V: torch.Tensor, top_p_B: torch.Tensor, u_B: torch.Tensor
) -> torch.Tensor:
    """Inverse-CDF sampling from the smallest top-p nucleus, one given uniform per row.

    Args:
        logits_B_V: float32 logits, already divided by the temperature.
        top_p_B: nucleus mass per row in (0, 1]; the most likely token is always kept.
        u_B: a uniform in [0, 1) per row.
    Returns:
        int64 [B] sampled token ids.
    """
    probs_B_V = torch.softmax(logits_B_V, dim=-1)
    sorted_B_V, order_B_V = probs_B_V.sort(dim=-1, descending=True, stable=True)
    cumulative_B_V = sorted_B_V.cumsum(dim=-1)
    # Keep a token when the mass strictly before it is below top_p.
    keep_B_V = (cumulative_B_V - sorted_B_V) < top_p_B[:, None]
    keep_B_V[:, 0] = True
    kept_B_V = torch.where(keep_B_V, sorted_B_V, torch.zeros_like(sorted_B_V)).cumsum(dim=-1)
    target_B = u_B * kept_B_V[:, -1]
    index_B = torch.searchsorted(kept_B_V, target_B[:, None], right=True)[:, 0]
    index_B = torch.minimum(index_B, keep_B_V.sum(dim=-1) - 1)
    return order_B_V.gather(1, index_B[:, None])[:, 0]
