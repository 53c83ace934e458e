"""The batching policy, as a pure function of the queue and the time: no asyncio, no model.

`BatchPlanner` holds pending work items and decides which ones form the next forward pass:
* budget: a batch costs `len(batch) * max(item.length)` tokens (padding counted) and stays
  within `max_batch_tokens`; an item longer than the budget runs alone rather than never;
* bucketing: items are ordered by length and a batch is a contiguous run of that order, grown
  from the oldest item towards whichever neighbour adds the least padding;
* delay cap: a batch that cannot yet fill the budget waits until its oldest item has waited
  `max_delay_s`; one that can (or a flush, when draining) goes at once;
* score and generate work never share a batch; the kind with the older head goes first.
The oldest item is always in the next batch of its kind, so nothing starves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from teacher.backends.base import GenerateTask, ScoreTask

Kind = Literal["score", "generate"]
KINDS: tuple[Kind, ...] = ("score", "generate")


@dataclass(frozen=True, eq=False)
class WorkItem:
    """One sequence of one request, waiting for a forward pass. Times are in clock seconds."""

    kind: Kind
    task: ScoreTask | GenerateTask
    length: int  # positions this item occupies in a padded batch (ids, or prompt + new tokens)
    future: asyncio.Future
    enqueued_at: float
    deadline: float | None = None  # caller's deadline; None = no deadline

    def dead(self, now: float) -> bool:
        """True when nobody wants the result any more: cancelled, resolved or past deadline."""
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


def padded_tokens(items: list[WorkItem]) -> int:
    """Token cost of a batch: every row is padded to the longest item."""
    return len(items) * max(item.length for item in items) if items else 0


def _grow(items: list[WorkItem], head: int, budget: int) -> tuple[int, int]:
    """Widen [lo, hi] around `head` in a length-sorted list while the padded cost fits budget.

    Each step takes the neighbour that adds the least padding: a shorter item on the left pads
    itself up to the current maximum; a longer item on the right pads every row already taken.
    """
    lo = hi = head
    n = len(items)
    while True:
        rows = hi - lo + 1
        best: tuple[int, str] | None = None
        if lo > 0 and (rows + 1) * items[hi].length <= budget:
            best = (items[hi].length - items[lo - 1].length, "left")
        if hi < n - 1 and (rows + 1) * items[hi + 1].length <= budget:
            right = (rows * (items[hi + 1].length - items[hi].length), "right")
            if best is None or right[0] < best[0]:
                best = right
        if best is None:
            return lo, hi
        if best[1] == "left":
            lo -= 1
        else:
            hi += 1


class BatchPlanner:
    """Pending work and the policy that turns it into batches (see the module docstring)."""

    def __init__(self, max_batch_tokens: int, max_delay_s: float) -> None:
        """Args:
        max_batch_tokens: padded-token budget of one batch.
        max_delay_s: longest time the oldest item waits for a batch to fill.
        """
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        self._pending: dict[Kind, list[WorkItem]] = {kind: [] for kind in KINDS}
        self.queued_tokens = 0

    @property
    def num_items(self) -> int:
        return sum(len(items) for items in self._pending.values())

    def add(self, items: list[WorkItem]) -> None:
        for item in items:
            self._pending[item.kind].append(item)
            self.queued_tokens += item.length

    def remove_dead(self, now: float) -> list[WorkItem]:
        """Take out every item nobody waits for any more (see `WorkItem.dead`) and return them."""
        removed: list[WorkItem] = []
        for kind, items in self._pending.items():
            alive = [item for item in items if not item.dead(now)]
            if len(alive) != len(items):
                removed.extend(item for item in items if item.dead(now))
                self._pending[kind] = alive
        self.queued_tokens -= sum(item.length for item in removed)
        return removed

    def remove_all(self) -> list[WorkItem]:
        removed = [item for items in self._pending.values() for item in items]
        self._pending = {kind: [] for kind in KINDS}
        self.queued_tokens = 0
        return removed

    def _candidate(self, kind: Kind) -> tuple[list[WorkItem], bool]:
        """The batch `kind` would send now, and whether it is full (work was left out)."""
        items = sorted(self._pending[kind], key=lambda it: (it.length, it.enqueued_at))
        oldest = min(items, key=lambda it: it.enqueued_at)
        lo, hi = _grow(items, items.index(oldest), self.max_batch_tokens)
        batch = items[lo : hi + 1]
        full = len(batch) < len(items) or padded_tokens(batch) >= self.max_batch_tokens
        return batch, full

    def next_batch(self, now: float, flush: bool = False) -> list[WorkItem] | None:
        """Pop the batch to run now, or None when the policy says to wait.

        Args:
            now: the current clock time.
            flush: send whatever is pending without waiting for the delay cap (draining).
        Returns:
            Items of one kind, shortest first, or None.
        """
        due: list[tuple[float, Kind, list[WorkItem]]] = []
        for kind, items in self._pending.items():
            if not items:
                continue
            batch, full = self._candidate(kind)
            head = min(item.enqueued_at for item in items)
            if flush or full or now >= head + self.max_delay_s:
                due.append((head, kind, batch))
        if not due:
            return None
        _, kind, batch = min(due, key=lambda d: d[0])
        taken = {id(item) for item in batch}
        self._pending[kind] = [item for item in self._pending[kind] if id(item) not in taken]
        self.queued_tokens -= sum(item.length for item in batch)
        return batch

    def wake_time(self) -> float | None:
        """Earliest time the planner's answer can change without new work arriving.

        Returns:
            The earliest delay-cap expiry or caller deadline among pending items, or None when
            nothing is pending.
        """
        times = [
            t
            for items in self._pending.values()
            for item in items
            for t in (item.enqueued_at + self.max_delay_s, item.deadline)
            if t is not None
        ]
        return min(times) if times else None
