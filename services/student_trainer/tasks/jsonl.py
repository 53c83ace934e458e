"""User tasks from JSONL files of {"prompt": ..., "answer": ...} records, with a named verifier.

Each non-blank line of the train and eval files is one JSON object with string fields "prompt"
and "answer" (other fields, e.g. an "id", are ignored). The verifier is chosen by name:

* "final_answer": the text after the last `marker` (e.g. "####" or "Answer:") in the completion
  equals the reference's, whitespace-normalised. The reference is the text after the last marker
  in "answer" when it has one (GSM8K-style full solutions), else the whole "answer".
* "exact": the whole completion, stripped, equals "answer", stripped.
* "package.module:function": a custom callable `(example, completion) -> bool`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tropd.trainer.tasks.base import Example, TaskError

Verifier = Callable[[Example, str], bool]


class JsonlConfig(BaseModel):
    """Options of a JSONL task; `load_task("jsonl", **options)` validates these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: Path = Field(description="JSONL file of the train prompt pool")
    eval: Path = Field(description="JSONL file of the held-out eval set")
    verifier: str = Field("final_answer", description='"final_answer", "exact" or "module:func"')
    marker: str = Field("####", min_length=1, description="final-answer marker (final_answer)")
    max_new_tokens: int = Field(256, ge=1, description="generation budget per completion")
    name: str | None = Field(None, description="label for logs; default: the train file's stem")


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def text_after_marker(text: str, marker: str) -> str | None:
    """Whitespace-normalised text after the last `marker`, None when `text` has no marker."""
    position = text.rfind(marker)
    return None if position < 0 else normalise_whitespace(text[position + len(marker) :])


@dataclass(frozen=True)
class FinalAnswerVerifier:
    marker: str

    def __call__(self, example: Example, completion: str) -> bool:
        got = text_after_marker(completion, self.marker)
        reference = text_after_marker(example.answer, self.marker)
        if reference is None:
            reference = normalise_whitespace(example.answer)
        return got is not None and got == reference


def exact_verifier(example: Example, completion: str) -> bool:
    return completion.strip() == example.answer.strip()


VERIFIERS: dict[str, Callable[[JsonlConfig], Verifier]] = {
    "final_answer": lambda config: FinalAnswerVerifier(config.marker),
    "exact": lambda config: exact_verifier,
}


def _import_verifier(spec: str) -> Verifier:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise TaskError(f"custom verifier {spec!r} must be written 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        message = f"cannot import module {module_name!r} of verifier {spec!r}: {error}"
        raise TaskError(message) from error
    function = getattr(module, attribute, None)
    if function is None:
        raise TaskError(f"module {module_name!r} has no {attribute!r} (verifier {spec!r})")
    if not callable(function):
        raise TaskError(f"verifier {spec!r} is a {type(function).__name__}, not a callable")
    return function  # type: ignore[no-any-return]


def resolve_verifier(config: JsonlConfig) -> Verifier:
    if config.verifier in VERIFIERS:
        return VERIFIERS[config.verifier](config)
    if ":" in config.verifier:
        return _import_verifier(config.verifier)
    raise TaskError(
        f"unknown verifier {config.verifier!r}: use one of {sorted(VERIFIERS)} "
        "or 'package.module:function'"
    )


def read_examples(path: Path) -> list[Example]:
    """Parse a JSONL file of prompt/answer records; errors name the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TaskError(f"cannot read task file {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise TaskError(f"{path}: not UTF-8 text: {error}") from error
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}:{number}: invalid JSON: {error.msg}") from error
        if not isinstance(record, dict):
            raise TaskError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        for key in ("prompt", "answer"):
            if key not in record:
                raise TaskError(f"{path}:{number}: missing field {key!r}")
            if not isinstance(record[key], str):
                raise TaskError(
                    f"{path}:{number}: field {key!r} must be a string, "
                    f"got {type(record[key]).__name__}"
                )
        examples.append(Example(record["prompt"], record["answer"]))
    if not examples:
        raise TaskError(f"{path}: no records (expected one JSON object per line)")
    return examples


class JsonlTask:
    """A task read from train and eval JSONL files, verified by the configured verifier."""

    def __init__(self, config: JsonlConfig) -> None:
        self.config = config
        self.name = config.name or config.train.stem
        self.max_new_tokens = config.max_new_tokens
        self._verifier = resolve_verifier(config)
        self._train = read_examples(config.train)
        self._eval = read_examples(config.eval)

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def verify(self, example: Example, completion: str) -> bool:
        return bool(self._verifier(example, completion))
