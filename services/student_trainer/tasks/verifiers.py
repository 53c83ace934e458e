"""Verifiers of user tasks: `(example, response) -> bool`, chosen by name.

* "final_answer": the text after the `marker` (e.g. "####" or "Answer:") in the completion
  equals the reference's, whitespace-normalised. `occurrence: last` (the default) reads from the
  last marker to the end of the completion; `occurrence: first` reads the rest of the line
  after the first marker (for models that go on writing after their answer). The reference is
  the text after the last marker of `answer` when it has one (GSM8K-style full solutions),
  else the whole `answer`.
* "exact": the whole completion, stripped, equals `answer`, stripped.
* "math": `math-verify` compares the completion's final answer (a `\\boxed{}` one first, else
  the last expression) with the reference (after the marker, as above), numerically and
  symbolically: `\\boxed{1/2}` matches 0.5, `\\frac{1}{2}` and `1/2`.
* "package.module:function": a custom callable `(example, response) -> bool`. It gets the whole
  `Example` (`example.fields` holds every field of the record) and the `Response`: decoded
  `text`, the sampled `ids` and `finish_reason` ("eos" or "length").
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tropd.trainer.tasks.base import Example, Response, TaskError

Verifier = Callable[[Example, Response], bool]


class VerifierOptions(BaseModel):
    """The verifier options every file-backed task takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verifier: str = Field(
        "final_answer", description='"final_answer", "exact", "math" or "package.module:function"'
    )
    marker: str = Field("####", min_length=1, description="final-answer marker")
    occurrence: Literal["last", "first"] = Field(
        "last", description="final_answer: read after the last marker, or the first one's line"
    )


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def text_after_marker(text: str, marker: str, occurrence: str = "last") -> str | None:
    """Whitespace-normalised text after `marker` (see the module docstring for `occurrence`),
    None when `text` has no marker."""
    if occurrence == "first":
        position = text.find(marker)
        if position < 0:
            return None
        return normalise_whitespace(text[position + len(marker) :].split("\n", 1)[0])
    position = text.rfind(marker)
    return None if position < 0 else normalise_whitespace(text[position + len(marker) :])


def reference_answer(example: Example, marker: str) -> str:
    """The reference's final answer: after its last marker, else the whole answer."""
    after = text_after_marker(example.answer, marker)
    return normalise_whitespace(example.answer) if after is None else after


@dataclass(frozen=True)
class FinalAnswerVerifier:
    marker: str
    occurrence: str = "last"

    def __call__(self, example: Example, response: Response) -> bool:
        got = text_after_marker(response.text, self.marker, self.occurrence)
        return got is not None and got == reference_answer(example, self.marker)


def exact_verifier(example: Example, response: Response) -> bool:
    return response.text.strip() == example.answer.strip()


@dataclass(frozen=True)
class MathVerifier:
    """`math-verify`'s parse + verify of the completion against the reference."""

    marker: str

    def __call__(self, example: Example, response: Response) -> bool:
        from math_verify import parse, verify

        # math-verify times its work out with signal.alarm, which only the main thread may use.
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = _parse_reference(reference_answer(example, self.marker), timeout)
        if not gold:
            return False
        answer = parse(response.text, parsing_timeout=timeout)
        return bool(answer) and bool(verify(gold, answer, timeout_seconds=timeout))


@lru_cache(maxsize=65_536)
def _parse_reference(reference: str, timeout: int | None) -> list[Any]:
    """A reference answer parsed once (eval re-verifies the same examples every time); bare
    LaTeX such as `x^2+1` parses only inside math delimiters, hence the second try."""
    from math_verify import parse

    return list(parse(reference, parsing_timeout=timeout)) or list(
        parse(f"${reference}$", parsing_timeout=timeout)
    )


VERIFIERS: dict[str, Callable[[VerifierOptions], Verifier]] = {
    "final_answer": lambda o: FinalAnswerVerifier(o.marker, o.occurrence),
    "exact": lambda o: exact_verifier,
    "math": lambda o: MathVerifier(o.marker),
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


def resolve_verifier(options: VerifierOptions) -> Verifier:
    """The verifier `options.verifier` names (a built-in or an importable callable)."""
    if options.verifier in VERIFIERS:
        return VERIFIERS[options.verifier](options)
    if ":" in options.verifier:
        return _import_verifier(options.verifier)
    raise TaskError(
        f"unknown verifier {options.verifier!r}: use one of {sorted(VERIFIERS)} "
        "or 'package.module:function'"
    )
