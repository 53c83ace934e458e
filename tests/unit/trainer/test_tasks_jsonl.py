"""JSONL user tasks: loading, the named verifiers, custom verifiers and bad-file errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tropd.trainer.tasks import TaskError, load_task
from tropd.trainer.tasks.base import Example


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    train = _write(
        tmp_path / "train.jsonl",
        [{"prompt": "1+1=", "answer": "2", "id": 7}, {"prompt": "2+2=", "answer": "4"}],
    )
    (tmp_path / "eval.jsonl").write_text(
        json.dumps({"prompt": "Q: 3+4?", "answer": "3 plus 4 is 7.\n#### 7"}) + "\n\n",
        encoding="utf-8",
    )
    return {"train": train, "eval": tmp_path / "eval.jsonl"}


def test_loads_train_and_eval_files(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files, max_new_tokens=32)
    assert task.name == "train" and task.max_new_tokens == 32
    assert task.train_examples() == [Example("1+1=", "2"), Example("2+2=", "4")]
    assert task.eval_examples() == [Example("Q: 3+4?", "3 plus 4 is 7.\n#### 7")]


def test_final_answer_verifier(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files)
    solution = task.eval_examples()[0]  # reference is a full solution: its text after "####"
    assert task.verify(solution, "3 and 4 make 7\n#### 7")
    assert task.verify(solution, "####  7 \n")  # whitespace-normalised
    assert task.verify(solution, "#### 9 ... no wait #### 7")  # the last marker counts
    assert not task.verify(solution, "#### 8")
    assert not task.verify(solution, "7")  # no marker, no answer
    plain = task.train_examples()[0]  # reference is the bare answer
    assert task.verify(plain, "one plus one #### 2")
    assert not task.verify(plain, "#### 2 apples")


def test_final_answer_with_another_marker(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files, marker="Answer:")
    assert task.verify(Example("q", "2"), "so... Answer:   2")
    assert not task.verify(Example("q", "2"), "#### 2")


def test_exact_verifier(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files, verifier="exact")
    assert task.verify(Example("q", " a b "), "a b\n")
    assert not task.verify(Example("q", "a b"), "a  b")


def test_custom_verifier_by_module_path(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_verifiers.py").write_text(
        "def ends_with_answer(example, completion):\n"
        "    return completion.endswith(example.answer)\n"
        "NOT_CALLABLE = 3\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_verifiers", raising=False)
    task = load_task("jsonl", **files, verifier="my_verifiers:ends_with_answer")
    assert task.verify(Example("q", "42"), "it is 42")
    assert not task.verify(Example("q", "42"), "it is 41")
    with pytest.raises(TaskError, match="cannot import module 'no_such_module_xyz'"):
        load_task("jsonl", **files, verifier="no_such_module_xyz:f")
    with pytest.raises(TaskError, match="has no 'missing'"):
        load_task("jsonl", **files, verifier="my_verifiers:missing")
    with pytest.raises(TaskError, match="is a int, not a callable"):
        load_task("jsonl", **files, verifier="my_verifiers:NOT_CALLABLE")
    with pytest.raises(TaskError, match="unknown verifier 'fuzzy'"):
        load_task("jsonl", **files, verifier="fuzzy")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "answer": "b"\n', r":2: invalid JSON"),
        ('{"prompt": "a", "answer": "b"}\n\n["a", "b"]\n', r":3: expected a JSON object, got list"),
        ('{"prompt": "a"}\n', r":1: missing field 'answer'"),
        ('{"prompt": "a", "answer": 7}\n', r":1: field 'answer' must be a string, got int"),
        ("\n  \n", r": no records"),
    ],
)
def test_bad_files_name_file_line_and_problem(
    files: dict[str, Path], tmp_path: Path, content: str, problem: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(TaskError, match=rf"bad\.jsonl{problem}"):
        load_task("jsonl", train=bad, eval=files["eval"])


def test_missing_file_and_missing_options(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot read task file .*nope.jsonl"):
        load_task("jsonl", train=files["train"], eval=tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match="eval: Field required"):
        load_task("jsonl", train=files["train"])
