"""Several teachers per job: `teachers:` names them, `routing.field` (an example field, e.g. a
data set's `domain` column) says which one grades each example's rollouts, `routing.default`
takes examples without the field and writes guidance drafts.

Each teacher is connected and checked like the single one (`teacher_link.connect_teacher`: same
tokenizer fingerprint and vocabulary as the student, the capabilities the loss needs, replicas
that agree); a refusal names the teacher. A step groups its rollouts by teacher, grades each
group (`grades.grade`, its requests in flight together), and puts the scores back in order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tropd.teacher.client import ScoredSequence
from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import RunConfig
from tropd.trainer.errors import SetupError
from tropd.trainer.grades import Grades, grade
from tropd.trainer.losses import LossConfig
from tropd.trainer.setup import Data, Student
from tropd.trainer.tasks.base import Example
from tropd.trainer.teacher_link import Teacher, connect_teacher

log = logging.getLogger(__name__)


def connect_teachers(cfg: RunConfig, student: Student, data: Data) -> Teacher:
    """The one `teacher`, or every one of `teachers` with routing (the default teacher first)."""
    if not cfg.teachers:
        return connect_teacher(cfg, student, data)
    routes: dict[str, Teacher] = {}
    try:
        for name, t in sorted(cfg.teachers.items()):
            try:
                routes[name] = connect_teacher(cfg, student, data, t)
            except SetupError as exc:
                raise SetupError(f"teacher {name!r} ({t.target}): {exc}") from exc
    except SetupError:
        for teacher in routes.values():
            teacher.client.close()
        raise
    default = routes[cfg.routing.default or min(routes)]
    teacher = Teacher(default.client, default.info, default.in_flight, routes, cfg.routing.field)
    try:
        counts = Counter(route(teacher, data.train, cfg.routing.default))  # refuse before step 0
    except SetupError:
        teacher.close()
        raise
    log.info("teachers %s, by %s: %s train examples each", sorted(routes), cfg.routing.field,
             dict(sorted(counts.items())))  # fmt: skip
    return teacher


def route(teacher: Teacher, examples: Sequence[Example], default: str | None) -> list[str]:
    """The name of the teacher of each example.

    Raises:
        SetupError: an example names no known teacher, or lacks the field with no default.
    """
    names = []
    for i, example in enumerate(examples):
        value: Any = example.fields.get(teacher.route_field or "")
        value = default if value is None else value  # absent, or null in a table's column
        if value is None or str(value) not in teacher.routes:
            raise SetupError(
                f"example {i} has {teacher.route_field}={value!r}, which names none of the "
                f"teachers {sorted(teacher.routes)} (set routing.default for examples without it)"
            )
        names.append(str(value))
    return names


def grade_routed(
    teacher: Teacher,
    examples: Sequence[Example],
    sequences: Sequence[TrainSequence],
    loss: LossConfig,
    default: str | None = None,
) -> tuple[Grades, dict[str, float]]:
    """Grades of the step's rollouts, each from its example's teacher, and per-teacher metrics
    (`teacher/<name>/sequences`, `scored_tokens`, `queue_s`, `compute_s`).

    With one teacher this is `grade` and no per-teacher metrics.
    """
    if not teacher.routes:
        return grade(teacher.client, teacher.info, sequences, loss, teacher.in_flight), {}
    names = route(teacher, examples, default)
    scores: list[ScoredSequence | None] = [None] * len(sequences)
    metrics: dict[str, float] = {}
    queue_s = compute_s = 0.0
    for name, chosen in sorted(teacher.routes.items()):
        mine = [i for i, q in enumerate(sequences) if names[q.prompt_index] == name]
        graded = Grades([], 0.0, 0.0)
        if mine:
            graded = grade(chosen.client, chosen.info, [sequences[i] for i in mine], loss,
                           chosen.in_flight)  # fmt: skip
        for i, row in zip(mine, graded.scores, strict=True):
            scores[i] = row
        queue_s += graded.queue_seconds
        compute_s += graded.compute_seconds
        metrics |= teacher_metrics(name, [sequences[i] for i in mine], graded)
    return Grades([s for s in scores if s is not None], queue_s, compute_s), metrics


def teacher_metrics(name: str, mine: Sequence[TrainSequence], graded: Grades) -> dict[str, float]:
    """`teacher/<name>/...` of the sequences one teacher graded."""
    return {
        f"teacher/{name}/sequences": float(len(mine)),
        f"teacher/{name}/scored_tokens": float(sum(q.response_len for q in mine)),
        f"teacher/{name}/queue_s": graded.queue_seconds,
        f"teacher/{name}/compute_s": graded.compute_seconds,
    }
