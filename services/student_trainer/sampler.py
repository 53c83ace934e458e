"""Which train examples each step reads (`task.sampling`), and its position for checkpoints.

* "epochs" (the default): every example once per epoch, in an order shuffled afresh for each
  epoch from (train.seed, epoch). A step that crosses the end of an epoch takes the rest of
  this epoch and the start of the next. The position is (epoch, index into that epoch's
  order); the order itself is recomputed on resume, so a checkpoint stores two integers.
* "replacement": independent uniform draws from a numpy generator seeded by train.seed (the
  sampler the built-in recipes were measured with); the position is the generator's state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tropd.trainer.errors import SetupError

log = logging.getLogger(__name__)


class PromptSampler:
    """Indices into the train pool, `n` per step, reproducible from the seed and position."""

    def __init__(self, size: int, seed: int, mode: str = "epochs") -> None:
        if size < 1:
            raise ValueError("the train pool is empty")
        if mode not in ("epochs", "replacement"):
            raise ValueError(f"unknown sampling {mode!r}")
        self.size, self.seed, self.mode = size, seed, mode
        self.epoch, self.position = 0, 0
        self._rng = np.random.default_rng(seed)
        self._order = self._epoch_order(0) if mode == "epochs" else None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def draw(self, n: int) -> list[int]:
        """The next `n` indices."""
        if self._order is None:
            return [int(i) for i in self._rng.choice(self.size, size=n, replace=True)]
        picks: list[int] = []
        while len(picks) < n:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
                log.info("epoch %d of the train pool (%d prompts) begins", self.epoch, self.size)
            take = min(n - len(picks), self.size - self.position)
            picks.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
        return picks

    def state(self) -> dict[str, Any]:
        """The position, JSON-able, for the checkpoint."""
        if self.mode == "replacement":
            return {"sampling": "replacement", "numpy_bit_generator": self._rng.bit_generator.state}
        return {"sampling": "epochs", "size": self.size, "epoch": self.epoch,
                "position": self.position}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's position; refuses one written for other data or mode.

        Raises:
            SetupError: the checkpoint sampled another way or from a pool of another size.
        """
        # Checkpoints written before epochs existed sampled with replacement and say nothing.
        saved_mode = state.get("sampling", "replacement")
        if saved_mode != self.mode:
            raise SetupError(
                f"the checkpoint sampled prompts by {saved_mode!r}, this run by {self.mode!r}; "
                f"set task.sampling={saved_mode} to resume it, or use a new train.run_dir"
            )
        if self.mode == "replacement":
            self._rng.bit_generator.state = state["numpy_bit_generator"]
            return
        if state["size"] != self.size:
            raise SetupError(
                f"the checkpoint's data position is for {state['size']} train examples, the "
                f"task now has {self.size}; resume with the same data, or use a new train.run_dir"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
