"""The batching policy, as a pure function of the queues and the time: no asyncio, no model.

`BatchPlanner` holds pending work items in one FIFO queue per (kind, job) and decides which ones
form the next forward pass:
* fairness: jobs are served by deficit round robin (DRR) in *tokens*: on its turn a job's
  deficit grows by a quantum proportional to its weight, and it sends items while their lengths
  fit the deficit. A job that empties its queue loses its deficit (no banking credit while idle).
  A turn cut short by a full batch resumes in the next batch, so backlogged jobs receive tokens
  in proportion to their weights, and every job with work gets at least one item per round.
  The lightest job's quantum is one batch, and a job that becomes active is put next in the
  ring, so a light job's request rides the next batch instead of queueing behind the floods;
* budget: a batch costs `len(batch) * max(item.length)` tokens (padding counted) and stays
  within `max_batch_tokens`; an item longer than the budget runs alone rather than never;
* bucketing: within its turn a job sends its oldest item first, then those closest in length
  to it, so one job's batch mates need little padding;
* delay cap: a batch that cannot yet fill the budget waits until its oldest item has waited
  `max_delay_s`; one that can (or a flush, when draining) goes at once;
* score and generate work never share a batch; the kind with the older head goes first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from tropd.teacher.backends.base import GenerateTask, ScoreTask

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
    job: str = "anonymous"  # the job it runs as (teacher.auth.Job.name)
    weight: float = 1.0  # that job's weight when the item was admitted

    def dead(self, now: float) -> bool:
        """True when nobody wants the result any more: cancelled, resolved or past deadline."""
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


def padded_tokens(items: list[WorkItem]) -> int:
    """Token cost of a batch: every row is padded to the longest item."""
    return len(items) * max(item.length for item in items) if items else 0


@dataclass
class _Turns:
    """DRR state of one kind: each job's deficit (tokens) and whose turn is in progress."""

    deficit: dict[str, float] = field(default_factory=dict)
    cursor: str | None = None  # the job whose turn comes next (or continues)
    # Jobs whose turn a full batch cut short: they resume without a new quantum.
    granted: frozenset[str] = frozenset()


@dataclass
class _Plan:
    batch: list[WorkItem]
    full: bool  # work of this kind was left out, or the batch reached the budget
    turns: _Turns


def _turn_order(items: list[WorkItem]) -> list[WorkItem]:
    """A job's items in the order its turns take them: oldest, then closest in length to it."""
    head = items[0]
    return sorted(items, key=lambda it: (abs(it.length - head.length), it.enqueued_at))


class BatchPlanner:
    """Pending work and the policy that turns it into batches (see the module docstring)."""

    def __init__(self, max_batch_tokens: int, max_delay_s: float) -> None:
        """Args:
        max_batch_tokens: padded-token budget of one batch.
        max_delay_s: longest time the oldest item waits for a batch to fill.
        """
        self.max_batch_tokens = max_batch_tokens
        self.max_delay_s = max_delay_s
        # kind -> job -> items in arrival order; dict order is the round-robin ring.
        self._queues: dict[Kind, dict[str, list[WorkItem]]] = {kind: {} for kind in KINDS}
        self._turns: dict[Kind, _Turns] = {kind: _Turns() for kind in KINDS}
        self.queued_tokens = 0
        self.job_tokens: dict[str, int] = {}  # queued tokens per job, both kinds

    @property
    def num_items(self) -> int:
        return sum(len(q) for queues in self._queues.values() for q in queues.values())

    def job_items(self) -> dict[str, int]:
        """Queued items per job, both kinds."""
        counts: dict[str, int] = {}
        for queues in self._queues.values():
            for job, items in queues.items():
                counts[job] = counts.get(job, 0) + len(items)
        return counts

    def _account(self, items: list[WorkItem], sign: int) -> None:
        for item in items:
            self.queued_tokens += sign * item.length
            left = self.job_tokens.get(item.job, 0) + sign * item.length
            if left:
                self.job_tokens[item.job] = left
            else:
                self.job_tokens.pop(item.job, None)

    def add(self, items: list[WorkItem]) -> None:
        for item in items:
            if item.job not in self._queues[item.kind]:
                self._activate(item.kind, item.job)
            self._queues[item.kind][item.job].append(item)
        self._account(items, +1)

    def _activate(self, kind: Kind, job: str) -> None:
        """Put a job that had no work of `kind` next in the ring, before the cursor.

        As in FQ-CoDel's new-flow list: a sparse job's request, if it fits one quantum, runs in
        the next batch instead of waiting a whole round behind the backlogged jobs. It arrives
        with no deficit, and a turn it interrupts resumes without a second quantum, so
        backlogged jobs keep their long-run weighted shares.
        """
        queues, turns = self._queues[kind], self._turns[kind]
        ring = list(queues.items())
        at = next((i for i, (name, _) in enumerate(ring) if name == turns.cursor), None)
        if at is None:
            queues[job] = []
            return
        ring.insert(at, (job, []))
        self._queues[kind] = dict(ring)
        turns.cursor = job

    def _set_queue(self, kind: Kind, job: str, items: list[WorkItem]) -> None:
        """Replace a job's queue; an emptied queue leaves the ring and forfeits its deficit."""
        queues, turns = self._queues[kind], self._turns[kind]
        if items:
            queues[job] = items
            return
        if turns.cursor == job:
            ring = list(queues)
            after = ring[(ring.index(job) + 1) % len(ring)]
            turns.cursor = None if after == job else after
        turns.granted -= {job}
        del queues[job]
        turns.deficit.pop(job, None)

    def remove_dead(self, now: float) -> list[WorkItem]:
        """Take out every item nobody waits for any more (see `WorkItem.dead`) and return them."""
        removed: list[WorkItem] = []
        for kind, queues in self._queues.items():
            for job, items in list(queues.items()):
                dead = [item for item in items if item.dead(now)]
                if dead:
                    removed.extend(dead)
                    self._set_queue(kind, job, [item for item in items if not item.dead(now)])
        self._account(removed, -1)
        return removed

    def remove_all(self) -> list[WorkItem]:
        removed = [it for queues in self._queues.values() for q in queues.values() for it in q]
        self._queues = {kind: {} for kind in KINDS}
        self._turns = {kind: _Turns() for kind in KINDS}
        self.queued_tokens = 0
        self.job_tokens = {}
        return removed

    def _plan(self, kind: Kind) -> _Plan:
        """The batch `kind` would send now, by DRR over its jobs, without changing any state."""
        queues, old = self._queues[kind], self._turns[kind]
        ring = list(queues)
        ordered = {job: _turn_order(items) for job, items in queues.items()}
        taken = dict.fromkeys(ring, 0)
        deficit = {job: old.deficit.get(job, 0.0) for job in ring}
        # Quanta are proportional to weights, and the lightest job's quantum is one batch (or
        # its longest item): a light job's whole request rides the next batch rather than one
        # slice per round, and every job sends at least one item per turn. Long-run shares do
        # not depend on the quantum; only the burst a turn may take does.
        weight = {job: items[-1].weight for job, items in queues.items()}
        longest = max(it.length for items in queues.values() for it in items)
        per_weight = max(longest, self.max_batch_tokens) / min(weight.values())
        i = ring.index(old.cursor) if old.cursor in queues else 0
        granted = set(old.granted) & set(queues)
        batch: list[WorkItem] = []
        widest = 0
        full = False
        while not full and any(taken[job] < len(ordered[job]) for job in ring):
            job = ring[i]
            items = ordered[job]
            if taken[job] < len(items):
                if job in granted:
                    granted.discard(job)  # a turn cut short by the last batch: no new quantum
                else:
                    deficit[job] += per_weight * weight[job]
                while taken[job] < len(items) and items[taken[job]].length <= deficit[job]:
                    item = items[taken[job]]
                    wider = max(widest, item.length)
                    if batch and (len(batch) + 1) * wider > self.max_batch_tokens:
                        full = True
                        break
                    batch.append(item)
                    widest = wider
                    deficit[job] -= item.length
                    taken[job] += 1
                if full:
                    granted.add(job)
                    break
            i = (i + 1) % len(ring)
        left = {job: d for job, d in deficit.items() if taken[job] < len(ordered[job])}
        turns = _Turns(left, ring[i] if left else None, frozenset(granted & set(left)))
        full = full or bool(left) or padded_tokens(batch) >= self.max_batch_tokens
        return _Plan(sorted(batch, key=lambda it: it.length), full, turns)

    def next_batch(self, now: float, flush: bool = False) -> list[WorkItem] | None:
        """Pop the batch to run now, or None when the policy says to wait.

        Args:
            now: the current clock time.
            flush: send whatever is pending without waiting for the delay cap (draining).
        Returns:
            Items of one kind, shortest first, or None.
        """
        due: list[tuple[float, Kind, _Plan]] = []
        for kind, queues in self._queues.items():
            if not queues:
                continue
            plan = self._plan(kind)
            head = min(items[0].enqueued_at for items in queues.values())
            if flush or plan.full or now >= head + self.max_delay_s:
                due.append((head, kind, plan))
        if not due:
            return None
        _, kind, plan = min(due, key=lambda d: d[0])
        taken = {id(item) for item in plan.batch}
        self._turns[kind] = plan.turns
        for job, items in list(self._queues[kind].items()):
            rest = [item for item in items if id(item) not in taken]
            if len(rest) != len(items):
                if rest:
                    self._queues[kind][job] = rest
                else:
                    del self._queues[kind][job]
        self._account(plan.batch, -1)
        return plan.batch

    def wake_time(self) -> float | None:
        """Earliest time the planner's answer can change without new work arriving.

        Returns:
            The earliest delay-cap expiry or caller deadline among pending items, or None when
            nothing is pending.
        """
        times = [
            t
            for queues in self._queues.values()
            for items in queues.values()
            for item in items
            for t in (item.enqueued_at + self.max_delay_s, item.deadline)
            if t is not None
        ]
        return min(times) if times else None
