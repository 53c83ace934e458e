"""The trainer across processes (`train.parallel: ddp | fsdp` under torchrun): the process group,
each rank's share of a step, the collectives the step needs, and the student's wrapper.

One process (`parallel: none`) gets `Ranks.single()`, whose collectives return their input, so
the loop and the update read the same either way. Gradients are exchanged by PyTorch's own
engines (DDP, FSDP2's `fully_shard`); this module only adds what they do not do: the step-wide
sums (token count, metrics), the agreed stop decision, the per-prompt seeds that make rollouts
independent of which rank draws them, and full weights for `generate`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tropd.output_head import decoder_hidden
from tropd.trainer.errors import SetupError

log = logging.getLogger(__name__)

_ROLLOUT, _TRUST = 0, 1  # stream tags: a rollout seed never equals a trust-test seed


class HiddenStates(nn.Module):
    """The student's decoder as one module (forward -> last hidden states [B, L, D]), so that the
    DDP / FSDP2 wrapper sees every forward the update makes; the output layer is applied outside
    by `OutputHead`, which reads the (unsharded) weight at call time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return decoder_hidden(self.model, **inputs)


@dataclass
class Ranks:
    """This process's place in the job: rank, world size, and the wrapped student.

    `module` is what the update calls for hidden states: DDP(HiddenStates) or the fully
    sharded HiddenStates; None in one process (the update calls the model itself).
    """

    parallel: str = "none"
    rank: int = 0
    world: int = 1
    module: nn.Module | None = None
    _fsdp: list[Any] = field(default_factory=list)  # FSDP2 modules, root last

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.parallel != "none"

    @property
    def wrapper(self) -> nn.Module:
        """The wrapped student (`wrap` must have run)."""
        if self.module is None:
            raise RuntimeError("Ranks.wrap(model) has not run")
        return self.module

    def share(self, n: int) -> slice:
        """This rank's contiguous slice of a step's `n` prompts (the sampler's order)."""
        if n % self.world:
            raise SetupError(
                f"rollout.prompts_per_step={n} does not split evenly over {self.world} ranks "
                "(every rank must make the same collectives); make it a multiple"
            )
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def max(self, value: int) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says so (e.g. one rank saw SIGTERM first)."""
        return bool(self.max(int(flag)))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable values; small ones)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: Sequence[float]) -> float:
        """Mean over every rank's values (0 when there are none)."""
        total, count = self.sum(float(np.sum(values))), self.sum(float(len(values)))
        return total / count if count else 0.0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def hf_state_dict(self) -> dict[str, Any]:
        """The whole student's weights on CPU under HF's names, for `save_pretrained` (a
        collective: every rank calls it; each gets the full dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.wrapper, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        # The wrapper (HiddenStates) names the HF model `model.`; the export uses HF's names.
        return {k.removeprefix("model."): v for k, v in full.items()}

    def wrap(self, model: nn.Module) -> None:
        """Wrap the student for training: DDP, or FSDP2 per decoder layer plus the root. Call
        before building the optimizer (FSDP2 replaces the parameters by sharded DTensors)."""
        if not self.distributed:
            return
        hidden = HiddenStates(model)
        device = next(model.parameters()).device
        if self.parallel == "ddp":
            # Rotary tables are the only buffers and never change: no per-forward broadcast,
            # so ranks may run different numbers of forwards between backwards.
            ids = [device.index] if device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(
                hidden, device_ids=ids, forward_sync_buffers=False
            )
            return
        from torch.distributed.fsdp import fully_shard

        self._fsdp = [fully_shard(layer) for layer in _decoder_layers(model)]
        self._fsdp.append(fully_shard(hidden))
        self.module = hidden
        # FSDP2 takes the first module to run forward as its root: make that the wrapper.
        eos = torch.zeros((1, 2), dtype=torch.long, device=device)
        with torch.no_grad():
            hidden(input_ids=eos, attention_mask=torch.ones_like(eos))
        self._fsdp[-1].reshard()  # the root keeps its weights after forward; the optimizer
        # must see the sharded parameters

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[None]:
        """Inside: every FSDP2 module holds its full weights and keeps them through forwards, so
        `generate` makes no collectives (ranks stop generating at different tokens). One
        all-gather on entry, reshard on exit; a no-op for one process and DDP."""
        if not self._fsdp:
            yield
            return
        for module in self._fsdp:
            module.unshard()
            module.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for module in self._fsdp[:-1]:
                module.set_reshard_after_forward(True, recurse=False)
            self._fsdp[-1].set_reshard_after_forward(False, recurse=False)  # the root's default
            for module in self._fsdp:
                module.reshard()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip by the norm over every rank's gradients: DDP's are already all-reduced (equal
        on every rank); FSDP2's are shards, whose norm `full_tensor` reduces."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join(parallel: str, device: str, timeout_s: float) -> Ranks:
    """This process's Ranks: joins torchrun's process group for ddp / fsdp (gloo on CPU, NCCL on
    CUDA, each rank on cuda:LOCAL_RANK).

    Raises:
        SetupError: ddp / fsdp outside torchrun, or `none` launched as several processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel == "none":
        if world > 1:
            raise SetupError(
                f"launched as {world} processes (torchrun) but train.parallel=none; set "
                "train.parallel=ddp or fsdp, or launch one process"
            )
        return Ranks.single()
    if "RANK" not in os.environ:
        raise SetupError(
            f"train.parallel={parallel} runs under torchrun (RANK, WORLD_SIZE, MASTER_ADDR "
            "unset): torchrun --nproc-per-node N -m tropd.trainer.cli run --config ..."
        )
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
    )
    ranks = Ranks(parallel, dist.get_rank(), dist.get_world_size())
    log.info("rank %d of %d (%s, %s)", ranks.rank, ranks.world, parallel, dist.get_backend())
    return ranks


def stream_seed(seed: int, step: int, index: int, stream: int) -> int:
    """A 63-bit seed from (run seed, step, global index, stream): the same prompt of the same
    step gets the same seed whichever rank draws it."""
    return int(np.random.SeedSequence([seed, step, index, stream]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))  # fmt: skip


def prompt_seeds(seed: int, step: int, share: slice) -> list[int]:
    """Rollout seeds of this rank's prompts (global indices `share`)."""
    return [stream_seed(seed, step, i, _ROLLOUT) for i in range(share.start, share.stop)]


def row_seeds(seed: int, step: int, first_row: int, rows: int) -> list[int]:
    """Trust-test seeds of this rank's rollouts (global row indices from `first_row`)."""
    return [stream_seed(seed, step, first_row + r, _TRUST) for r in range(rows)]


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder's repeated blocks: the ModuleList directly under the base model
    (`model.layers` in Llama/Qwen, `transformer.h` in GPT-2)."""
    base = getattr(model, "base_model", model)
    for child in base.children():
        if isinstance(child, nn.ModuleList):
            return list(child)
    raise SetupError(f"train.parallel=fsdp: no layer list under {type(base).__name__}")
