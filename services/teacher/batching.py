"""The batching policy, as a pure function of the queues and the time: no asyncio, no model.

`BatchPlanner` holds pending work items in one queue per (kind, job) and decides which ones
form the next forward pass:
* fairness: start-time fair queueing (SFQ) in *tokens*. Each job carries a virtual tag: the
  virtual time at which its next item starts. Sending an item of `n` tokens advances its job's
  tag by `n / weight`; every batch takes items in order of their jobs' tags, so backlogged jobs
  receive tokens in proportion to their weights. The virtual time is the largest tag sent so
  far. A job that becomes active starts at `max(virtual time, its own last tag)`: it banks no
  credit while idle, and it keeps the debt of a burst it already received. That last part is
  what closed-loop clients need: a job whose queue empties each time its batch returns (it
  resends only then) cannot jump ahead again on re-arrival, as it could when an emptied queue
  forfeited its state (deficit round robin);
* a sparse job's first item starts at the virtual time, below every backlogged job's tag (ties go
  to the job with less work queued), so a
  request of a light job that fits its share of one batch rides the very next batch;
* budget: a batch costs `len(batch) * max(item.length)` tokens (padding counted) and stays
  within `max_batch_tokens`, or within `contended_batch_tokens` while more than one job has
  work of that kind waiting (smaller batches, shorter waits for light jobs beside floods); an
  item longer than the budget runs alone rather than never;
* bucketing: a job sends its oldest item first, then those closest in length to it, so one
  job's batch mates need little padding;
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
    batches_before: int = 0  # batches the scheduler had dispatched when the item was queued

    def dead(self, now: float) -> bool:
        """True when nobody wants the result any more: cancelled, resolved or past deadline."""
        return self.future.done() or (self.deadline is not None and now >= self.deadline)


def padded_tokens(items: list[WorkItem]) -> int:
    """Token cost of a batch: every row is padded to the longest item."""
    return len(items) * max(item.length for item in items) if items else 0


@dataclass
class _Clock:
    """SFQ state of one kind: the virtual time and each job's tag (in tokens per weight)."""

    vtime: float = 0.0
    tags: dict[str, float] = field(default_factory=dict)  # next start tag of each job


@dataclass
class _Plan:
    batch: list[WorkItem]
    full: bool  # work of this kind was left out, or the batch reached the budget
    clock: _Clock


def _turn_order(items: list[WorkItem]) -> list[WorkItem]:
    """A job's items in the order it sends them: oldest, then closest in length to it."""
    head = items[0]
    return sorted(items, key=lambda it: (abs(it.length - head.length), it.enqueued_at))


class BatchPlanner:
    """Pending work and the policy that turns it into batches (see the module docstring)."""

    def __init__(
        self, max_batch_tokens: int, max_delay_s: float, contended_batch_tokens: int | None = None
    ) -> None:
        """Args:
        max_batch_tokens: padded-token budget of one batch.
        max_delay_s: longest time the oldest item waits for a batch to fill.
        contended_batch_tokens: budget while two or more jobs have work of the batch's kind
            queued (None: max_batch_tokens).
        """
        self.max_batch_tokens = max_batch_tokens
        self.contended_batch_tokens = contended_batch_tokens or max_batch_tokens
        self.max_delay_s = max_delay_s
        # kind -> job -> items in arrival order.
        self._queues: dict[Kind, dict[str, list[WorkItem]]] = {kind: {} for kind in KINDS}
        self._clocks: dict[Kind, _Clock] = {kind: _Clock() for kind in KINDS}
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

    def budget(self, kind: Kind) -> int:
        """The padded-token budget of the next batch of `kind`."""
        contended = len(self._queues[kind]) > 1
        return self.contended_batch_tokens if contended else self.max_batch_tokens

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
            queues, clock = self._queues[item.kind], self._clocks[item.kind]
            if item.job not in queues:
                # (Re)activation: no credit for idle time, but a burst already received stays
                # owed (its tag is ahead of the virtual time).
                clock.tags[item.job] = max(clock.vtime, clock.tags.get(item.job, clock.vtime))
                queues[item.job] = []
            queues[item.job].append(item)
        self._account(items, +1)

    def _set_queue(self, kind: Kind, job: str, items: list[WorkItem]) -> None:
        """Replace a job's queue; an emptied queue leaves the set of active jobs (its tag stays)."""
        if items:
            self._queues[kind][job] = items
        else:
            del self._queues[kind][job]

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
        self._clocks = {kind: _Clock() for kind in KINDS}
        self.queued_tokens = 0
        self.job_tokens = {}
        return removed

    def _plan(self, kind: Kind) -> _Plan:
        """The batch `kind` would send now, by SFQ over its jobs, without changing any state."""
        queues, old = self._queues[kind], self._clocks[kind]
        budget = self.budget(kind)
        ordered = {job: _turn_order(items) for job, items in queues.items()}
        taken = dict.fromkeys(queues, 0)
        tags = dict(old.tags)
        vtime = old.vtime
        # Ties (jobs activated at the same virtual time) go to the job with less work queued
        # (the sparse one: its whole request may fit), then to the one whose head came first.
        def tie_key(job: str) -> tuple[int, float]:
            return sum(it.length for it in queues[job]), ordered[job][0].enqueued_at

        rank = {job: i for i, job in enumerate(sorted(queues, key=tie_key))}
        batch: list[WorkItem] = []
        widest = 0
        full = False
        while True:
            waiting = [job for job in queues if taken[job] < len(ordered[job])]
            if not waiting:
                break
            job = min(waiting, key=lambda j: (tags[j], rank[j]))
            item = ordered[job][taken[job]]
            wider = max(widest, item.length)
            if batch and (len(batch) + 1) * wider > budget:
                full = True
                break
            batch.append(item)
            widest = wider
            taken[job] += 1
            vtime = max(vtime, tags[job])
            tags[job] += item.length / item.weight
        # Tags at or below the virtual time carry no information (activation takes the max).
        tags = {job: tag for job, tag in tags.items() if tag > vtime or job in queues}
        full = full or padded_tokens(batch) >= budget
        return _Plan(sorted(batch, key=lambda it: it.length), full, _Clock(vtime, tags))

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
        self._clocks[kind] = plan.clock
        for job, items in list(self._queues[kind].items()):
            rest = [item for item in items if id(item) not in taken]
            if len(rest) != len(items):
                self._set_queue(kind, job, rest)
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
