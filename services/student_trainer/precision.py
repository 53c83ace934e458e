"""The student's arithmetic: float32 master weights, forwards under autocast, fp16 loss scaling.

Weights, gradients and AdamW state stay in `student.param_dtype` (float32 by default), so a step
at a small learning rate is not rounded away; forwards run under `torch.autocast` in
`student.compute_dtype`, so the matmuls (and the rollout's KV cache) are bf16/fp16. Backward
runs outside the autocast context, as torch recommends. float16 has too few exponent bits for
small gradients, so it comes with a `torch.amp.GradScaler`; bfloat16 needs none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How the student computes; `autocast()` wraps every forward (rollout, update, eval)."""

    compute_dtype: torch.dtype = torch.float32
    device_type: str = "cpu"
    # float16 only; checkpointed with the run (checkpoint.save_scaler), so a resumed run goes on
    # with the scale it had.
    scaler: torch.amp.GradScaler | None = field(default=None, compare=False)

    @classmethod
    def of(cls, compute_dtype: str, device: str | torch.device) -> Precision:
        device_type = torch.device(device).type
        dtype = DTYPES[compute_dtype]
        scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        return cls(dtype, device_type, scaler)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the compute dtype; a no-op in float32 (the float32 path stays bitwise
        what it was without this module)."""
        if self.compute_dtype == torch.float32:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.compute_dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the accumulated gradients by the loss scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, applied: bool) -> None:
        """Apply the step (unless skipped) and let the loss scale react to overflow."""
        if self.scaler is None:
            if applied:
                optimizer.step()
            return
        if applied:
            self.scaler.step(optimizer)
        self.scaler.update()
