"""Overlap (`rollout.overlap`): the teacher grades rows while the student still samples others.

`roll_out` hands each group of finished rows to `ScoreStream.add`; every `overlap_chunk_rows`
finished rows of one teacher become a Score request, sent at once from that teacher's pool of
`in_flight` threads (`teacher.max_in_flight`), so the teacher computes while the engine keeps
sampling. `finish` sends what is left, waits, and returns the grades in the step's row order,
as `routing.grade_routed` would: each row scored by its example's teacher.

Training is unchanged by the overlap: scores are per sequence (float32 scores agree across
batchings to ~2e-6), and the newest group is held back until the next one arrives, so a rollout
that finishes in one group (the `generate` engine with every row in one call, the demo) sends
nothing early and `finish` makes exactly `grade_routed`'s requests. Chunks follow the engine's
finish order, not timing, so a seeded run sends the same requests each time. A rollout that
fails half way leaves its requests in flight to end on their own (bounded by the client's
deadline); the step fails anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from tropd.teacher.client import ScoredSequence, ScoreResults
from tropd.trainer.batch import TrainSequence
from tropd.trainer.grades import Grades, collect, scorer, split
from tropd.trainer.losses import LossConfig
from tropd.trainer.routing import grade_routed, route, teacher_metrics
from tropd.trainer.tasks.base import Example
from tropd.trainer.teacher_link import Teacher

Rows = list[tuple[int, TrainSequence]]  # (row in the step's order, sequence)


class ScoreStream:
    """Score requests sent as rows finish; `finish` collects them. See the module docstring."""

    def __init__(
        self,
        teacher: Teacher,
        examples: Sequence[Example],
        loss: LossConfig,
        default: str | None,
        chunk_rows: int | None,
    ) -> None:
        """chunk_rows: rows per early request; None sends nothing before `finish` (no overlap)."""
        self.teacher, self.examples, self.loss, self.default = teacher, examples, loss, default
        self.chunk_rows = chunk_rows
        self.teachers = dict(teacher.routes) or {"": teacher}
        self.names = route(teacher, examples, default) if teacher.routes else None
        self.pending: dict[str, Rows] = {name: [] for name in self.teachers}
        self.held: Rows = []
        self.sent: dict[str, list[tuple[list[int], Future[ScoreResults]]]] = {
            name: [] for name in self.teachers
        }
        self.pools: dict[str, ThreadPoolExecutor] = {}

    def add(self, finished: Rows) -> None:
        """Rows the engine just finished (`roll_out`'s `on_finished`)."""
        if self.chunk_rows is None:
            return
        self._queue(self.held)
        self.held = finished
        for name, rows in self.pending.items():
            while len(rows) >= self.chunk_rows:
                self._send(name, rows[: self.chunk_rows], 1)
                del rows[: self.chunk_rows]

    def finish(self, sequences: Sequence[TrainSequence]) -> tuple[Grades, dict[str, float]]:
        """Grades of all `sequences` (the step's rollouts, in row order) and per-teacher metrics.

        Raises:
            TeacherClientError: the first failed request's error, once every request has ended.
        """
        try:
            if not any(self.sent.values()):  # nothing went early: the one-shot requests
                return grade_routed(self.teacher, self.examples, sequences, self.loss,
                                    self.default)  # fmt: skip
            self._queue(self.held)
            for name, rows in self.pending.items():
                if rows:
                    self._send(name, rows, self.teachers[name].in_flight)
            return self._collect(sequences)
        finally:
            for pool in self.pools.values():
                pool.shutdown(wait=True)

    def _queue(self, rows: Rows) -> None:
        for row, q in rows:
            name = "" if self.names is None else self.names[q.prompt_index]
            self.pending[name].append((row, q))

    def _send(self, name: str, rows: Rows, in_flight: int) -> None:
        """Requests for `rows` within the teacher's request limit (about `in_flight` of them)."""
        chosen = self.teachers[name]
        if name not in self.pools:
            self.pools[name] = ThreadPoolExecutor(chosen.in_flight, f"teacher-score-{name}")
        score = scorer(chosen.client, chosen.info, self.loss)
        by_id = {id(q): row for row, q in rows}
        for chunk in split([q for _, q in rows], chosen.info.limits.max_request_tokens, in_flight):
            future = self.pools[name].submit(score, chunk)
            self.sent[name].append(([by_id[id(q)] for q in chunk], future))

    def _collect(self, sequences: Sequence[TrainSequence]) -> tuple[Grades, dict[str, float]]:
        scores: list[ScoredSequence | None] = [None] * len(sequences)
        errors = [f.exception() for sent in self.sent.values() for _, f in sent]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        queue_s = compute_s = 0.0
        metrics: dict[str, float] = {}
        for name, sent in sorted(self.sent.items()):
            graded = collect([f.result() for _, f in sent])
            rows = [row for chunk_rows, _ in sent for row in chunk_rows]
            for row, scored in zip(rows, graded.scores, strict=True):
                scores[row] = scored
            queue_s += graded.queue_seconds
            compute_s += graded.compute_seconds
            if self.names is not None:
                metrics |= teacher_metrics(name, [sequences[r] for r in rows], graded)
        missing = [row for row, s in enumerate(scores) if s is None]
        if missing:
            raise RuntimeError(f"rows {missing[:5]} were never sent to a teacher")
        return Grades([s for s in scores if s is not None], queue_s, compute_s), metrics
