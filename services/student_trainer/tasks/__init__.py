"""Tasks the trainer can run, chosen by name from an explicit registry.

    load_task("addition")                                  # the built-in world's task, 4 digits
    load_task("addition", digits=12)                       # the long-answer variant
    load_task("dataset", path="data/gsm8k.parquet", prompt_field="question", verifier="math")
    load_task("jsonl", train="t.jsonl", eval="e.jsonl", verifier="final_answer", marker="####")
    load_task({"name": "jsonl", "train": ..., "eval": ...})  # the same, as a config mapping

`check_task_options` validates the options alone (files exist, keys known) without loading
any data: what `tropd-train print-config` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from tropd.trainer.tasks.addition import AdditionConfig, AdditionTask
from tropd.trainer.tasks.base import Example, Response, Task, TaskError
from tropd.trainer.tasks.dataset import DatasetConfig, DatasetTask, JsonlConfig, jsonl_task


@dataclass(frozen=True)
class TaskEntry:
    options: type[BaseModel]  # the task's options model (frozen, extra="forbid")
    build: Callable[[Any], Task]  # options model -> task (loads its data)


TASKS: dict[str, TaskEntry] = {
    "addition": TaskEntry(AdditionConfig, AdditionTask),
    "dataset": TaskEntry(DatasetConfig, DatasetTask),
    "jsonl": TaskEntry(JsonlConfig, jsonl_task),
}

# Options that used to belong to a task, and where they live now.
_MOVED = {"max_new_tokens": "rollout.max_new_tokens (the one response budget)"}


def _split(name_or_spec: str | Mapping[str, Any], options: dict[str, Any]) -> tuple[str, dict]:
    if isinstance(name_or_spec, Mapping):
        spec = dict(name_or_spec)
        if "name" not in spec:
            raise TaskError(f"task spec {spec!r} has no 'name' (one of {sorted(TASKS)})")
        return str(spec.pop("name")), {**spec, **options}
    return name_or_spec, options


def check_task_options(name_or_spec: str | Mapping[str, Any], **options: Any) -> BaseModel:
    """Validate a task's options without loading its data.

    Args:
        name_or_spec: a name in TASKS, or a mapping {"name": ..., **options}.
        options: task options (merged over the mapping's); unknown ones are rejected.
    Returns:
        The validated options model. Raises TaskError naming the task and the bad option or
        missing file.
    """
    name, options = _split(name_or_spec, options)
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}: choose one of {sorted(TASKS)}")
    try:
        return TASKS[name].options(**options)
    except ValidationError as error:
        problems = "; ".join(_problem(e) for e in error.errors())
        raise TaskError(f"invalid options for task {name!r}: {problems}") from error


def _problem(error: Any) -> str:
    where = ".".join(map(str, error["loc"])) or "options"
    moved = _MOVED.get(where) if error["type"] == "extra_forbidden" else None
    message = error["msg"].removeprefix("Value error, ")
    if error["type"].startswith("path_"):  # pydantic's path errors do not name the path
        message += f" ({error['input']})"
    return f"{where}: {message}" + (f"; it is set as {moved}" if moved else "")


def load_task(name_or_spec: str | Mapping[str, Any], **options: Any) -> Task:
    """Build a task (loading its data) from a registry name plus options, or a mapping.

    Args and errors as `check_task_options`; a file that cannot be read or parsed is a
    TaskError too.
    """
    name, options = _split(name_or_spec, options)
    validated = check_task_options(name, **options)
    return TASKS[name].build(validated)


__all__ = [
    "TASKS", "Example", "Response", "Task", "TaskError", "check_task_options", "load_task",
]  # fmt: skip
