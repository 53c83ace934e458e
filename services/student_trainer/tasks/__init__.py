"""Tasks the trainer can run, chosen by name from an explicit registry.

    load_task("addition")                                  # the built-in world's task, 4 digits
    load_task("addition", digits=12)                       # the long-answer variant
    load_task("jsonl", train="t.jsonl", eval="e.jsonl", verifier="final_answer", marker="####")
    load_task({"name": "jsonl", "train": ..., "eval": ...})  # the same, as a config mapping
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from tropd.trainer.tasks.addition import AdditionConfig, AdditionTask
from tropd.trainer.tasks.base import Example, Task, TaskError
from tropd.trainer.tasks.jsonl import JsonlConfig, JsonlTask

TASKS: dict[str, Callable[[dict[str, Any]], Task]] = {
    "addition": lambda options: AdditionTask(AdditionConfig(**options)),
    "jsonl": lambda options: JsonlTask(JsonlConfig(**options)),
}


def load_task(name_or_spec: str | Mapping[str, Any], **options: Any) -> Task:
    """Build a task from a registry name plus options, or from a mapping with a "name" key.

    Args:
        name_or_spec: a name in TASKS, or a mapping {"name": ..., **options}.
        options: task options (merged over the mapping's); unknown ones are rejected.
    Returns:
        The task. Raises TaskError naming the task and the bad option or file.
    """
    if isinstance(name_or_spec, Mapping):
        spec = dict(name_or_spec)
        if "name" not in spec:
            raise TaskError(f"task spec {spec!r} has no 'name' (one of {sorted(TASKS)})")
        name = str(spec.pop("name"))
        options = {**spec, **options}
    else:
        name = name_or_spec
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}: choose one of {sorted(TASKS)}")
    try:
        return TASKS[name](options)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors()
        )
        raise TaskError(f"invalid options for task {name!r}: {problems}") from error


__all__ = ["TASKS", "Example", "Task", "TaskError", "load_task"]
