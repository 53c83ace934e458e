"""User tasks from data sets, loaded with `datasets.load_dataset`, and the JSONL task on top.

    load_task("dataset", path="openai/gsm8k", subset="main", prompt_field="question",
              verifier="final_answer", marker="####")           # a hub data set
    load_task("dataset", path="data/gsm8k.parquet", train_split="train[:90%]",
              eval_split="train[90%:]", prompt_field="question")  # one local file, split in two
    load_task("dataset", path="parquet", data_files={"train": "a.parquet", "test": "b.parquet"})
    load_task("jsonl", train="train.jsonl", eval="eval.jsonl")    # {"prompt", "answer"} lines

`path` is what `load_dataset` takes first: a hub id, a local data folder, or a format
(parquet, json, csv, arrow) with `data_files`; a single local file is passed as its format plus
that file. `prompt_field` holds the user's text (a string) or a whole chat (a list of
{"role", "content"} turns ending with a user turn); `answer_field` the reference; the optional
`system_field` and `id_field` a per-example system prompt and id. Every field of a record
stays in `Example.fields` for custom verifiers. Missing local files are refused when the
options are validated, so `tropd-train print-config` catches them before any run.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, FilePath, model_validator

from tropd.trainer.tasks.base import Example, Response, TaskError
from tropd.trainer.tasks.verifiers import VerifierOptions, resolve_verifier

log = logging.getLogger(__name__)

# The response budget of a data-set task when `rollout.max_new_tokens` is not set.
DEFAULT_MAX_NEW_TOKENS = 1024
# A local file of one of these formats may be given as `path` directly.
FILE_FORMATS = {
    ".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow",
}  # fmt: skip

DataFiles = str | list[str] | dict[str, str | list[str]]


class FieldOptions(VerifierOptions):
    """Which field of a record is what, plus the verifier options."""

    prompt_field: str = Field("prompt", description="the user's text, or a chat message list")
    answer_field: str = Field("answer", description="the reference answer or solution")
    system_field: str | None = Field(None, description="per-example system prompt (optional)")
    id_field: str | None = Field(None, description="per-example id (optional)")
    name: str | None = Field(None, description="label for logs; default: from the path")


class DatasetConfig(FieldOptions):
    """Options of the `dataset` task; `load_task("dataset", **options)` validates these."""

    path: str = Field(description="hub id, local folder or file, or a format with data_files")
    subset: str | None = Field(None, description="the data set's configuration, e.g. 'main'")
    data_files: DataFiles | None = Field(None, description="local files (globs allowed)")
    train_split: str = Field("train", description="split of the train pool, e.g. 'train[:90%]'")
    eval_split: str = Field("test", description="split of the held-out eval set")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")

    @model_validator(mode="after")
    def _local_files_exist(self) -> DatasetConfig:
        for file in _listed_files(self.data_files):
            if glob.has_magic(file) and not glob.glob(file, recursive=True):
                raise ValueError(f"data_files pattern {file!r} matches no file")
            if not glob.has_magic(file) and not Path(file).expanduser().exists():
                raise ValueError(f"data file {file} does not exist")
        if _looks_local(self.path) and not Path(self.path).expanduser().exists():
            raise ValueError(f"data set path {self.path} does not exist")
        return self


class JsonlConfig(FieldOptions):
    """Options of the `jsonl` task: two JSON-lines files, loaded through `datasets`."""

    train: FilePath = Field(description="JSONL file of the train prompt pool")
    eval: FilePath = Field(description="JSONL file of the held-out eval set")


def _listed_files(data_files: DataFiles | None) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return list(data_files)
    return [f for files in data_files.values() for f in _listed_files(files)]


def _looks_local(path: str) -> bool:
    """A path, not a hub id or format name: it starts like one or names a data file."""
    return path.startswith((".", "/", "~")) or Path(path).suffix in FILE_FORMATS


def _load_split(config: DatasetConfig, split: str) -> Any:
    import datasets

    path, data_files = config.path, config.data_files
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix not in FILE_FORMATS:
            raise TaskError(f"{path}: unknown data file format; use one of {sorted(FILE_FORMATS)}")
        path, data_files = FILE_FORMATS[local.suffix], str(local)
    try:
        return datasets.load_dataset(
            path, name=config.subset, data_files=data_files, split=split,
            revision=config.revision,
        )  # fmt: skip
    except Exception as error:  # datasets raises many types: files, formats, splits, network
        cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
        source = repr(config.path) + (f" (files {data_files})" if data_files else "")
        raise TaskError(
            f"cannot load split {split!r} of data set {source}: "
            f"{type(error).__name__}: {error}{cause}"
        ) from error


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # numeric answers, e.g. a "label" column of ints
    raise TaskError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")


def _messages(value: list[Any], where: str, field: str) -> tuple[dict[str, str], ...]:
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping) or not {"role", "content"} <= turn.keys():
            raise TaskError(f"{where}: {field}[{i}] is not a {{'role', 'content'}} turn")
        turns.append({"role": str(turn["role"]), "content": str(turn["content"])})
    if not turns or turns[-1]["role"] != "user":
        raise TaskError(
            f"{where}: the chat in {field!r} must end with a user turn (the model answers it)"
        )
    return tuple(turns)


def to_example(record: Mapping[str, Any], where: str, options: FieldOptions) -> Example:
    """One record as an Example; errors name `where` (split and row) and the field."""
    for field in (options.prompt_field, options.answer_field):
        if field not in record:
            raise TaskError(f"{where}: no field {field!r} (fields: {', '.join(sorted(record))})")
    prompt_value = record[options.prompt_field]
    messages = None
    if isinstance(prompt_value, list):
        messages = _messages(prompt_value, where, options.prompt_field)
        prompt = messages[-1]["content"]
    else:
        prompt = _text(prompt_value, where, options.prompt_field)

    def optional(field: str | None) -> str | None:
        if field is None:
            return None
        if field not in record:
            raise TaskError(f"{where}: no field {field!r} (fields: {', '.join(sorted(record))})")
        value = record[field]
        return None if value is None else _text(value, where, field)

    return Example(
        prompt=prompt,
        answer=_text(record[options.answer_field], where, options.answer_field),
        messages=messages,
        system=optional(options.system_field),
        id=optional(options.id_field),
        fields=dict(record),
    )


def read_split(config: DatasetConfig, split: str) -> list[Example]:
    rows = _load_split(config, split)
    examples = [to_example(r, f"{config.path} [{split}] row {i}", config) for i, r in
                enumerate(rows)]  # fmt: skip
    if not examples:
        raise TaskError(f"split {split!r} of data set {config.path!r} has no rows")
    return examples


class DatasetTask:
    """A task read from a data set's train and eval splits, verified by the chosen verifier."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        files = _listed_files(config.data_files)
        self.name = config.name or Path(files[0] if files else config.path).stem
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        self._verifier = resolve_verifier(config)
        self._train = read_split(config, config.train_split)
        self._eval = read_split(config, config.eval_split)
        log.info(
            "task %s: %d train and %d eval examples from %s", self.name, len(self._train),
            len(self._eval), config.path,
        )  # fmt: skip

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def verify(self, example: Example, response: Response) -> bool:
        return bool(self._verifier(example, response))


def jsonl_task(config: JsonlConfig) -> DatasetTask:
    """The `jsonl` task: a `dataset` task over two JSON-lines files."""
    fields = config.model_dump(exclude={"train", "eval", "name"})
    return DatasetTask(
        DatasetConfig(
            path="json",
            data_files={"train": str(config.train), "eval": str(config.eval)},
            train_split="train",
            eval_split="eval",
            name=config.name or config.train.stem,
            **fields,
        )
    )
