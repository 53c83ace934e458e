"""Data-set tasks through `datasets.load_dataset` (parquet, JSONL, CSV; field mapping, chats,
split slices), the option checks print-config runs, and the built-in verifiers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tropd.trainer.tasks import Response, TaskError, check_task_options, load_task
from tropd.trainer.tasks.base import Example


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": "1+1=", "answer": "2", "id": 7}, {"prompt": "2+2=", "answer": "4", "id": 8}],
    )
    (tmp_path / "eval.jsonl").write_text(
        json.dumps({"prompt": "Q: 3+4?", "answer": "3 plus 4 is 7.\n#### 7"}) + "\n\n",
        encoding="utf-8",
    )
    return {"train": train, "eval": tmp_path / "eval.jsonl"}


def test_jsonl_loads_through_datasets_with_every_field(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files)
    assert task.name == "train"
    assert task.train_examples() == [Example("1+1=", "2"), Example("2+2=", "4")]
    assert task.train_examples()[0].fields == {"prompt": "1+1=", "answer": "2", "id": 7}
    assert task.eval_examples() == [Example("Q: 3+4?", "3 plus 4 is 7.\n#### 7")]


def test_parquet_field_mapping_chats_and_split_slices(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Terse."}, {"role": "user", "content": "2+2?"}]
    table = pa.table({
        "question": ["What is 1+1?", "What is 2+3?", "3+3?", "4+4?"],
        "solution": ["1+1 = 2\n#### 2", "#### 5", "#### 6", "#### 8"],
        "sys": ["Be brief.", None, None, None],
        "uid": ["a", "b", "c", "d"],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "qa.parquet")
    task = load_task(
        "dataset", path=str(tmp_path / "qa.parquet"), train_split="train[:3]",
        eval_split="train[3:]", prompt_field="question", answer_field="solution",
        system_field="sys", id_field="uid",
    )  # fmt: skip
    assert [e.id for e in task.train_examples()] == ["a", "b", "c"]
    assert [e.id for e in task.eval_examples()] == ["d"]
    first = task.train_examples()[0]
    assert (first.prompt, first.system, first.messages) == ("What is 1+1?", "Be brief.", None)
    assert task.train_examples()[1].system is None
    assert task.verify(first, Response("so it is 2\n#### 2"))

    pq.write_table(pa.table({"messages": [chat], "answer": ["4"]}), tmp_path / "chat.parquet")
    task = load_task("dataset", path="parquet", data_files=str(tmp_path / "chat.parquet"),
                     eval_split="train", prompt_field="messages")  # fmt: skip
    example = task.train_examples()[0]
    assert example.messages == tuple(chat) and example.prompt == "2+2?"


def test_csv_and_a_chat_that_does_not_end_with_the_user(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("prompt,answer\nhi,1\nho,2\n", encoding="utf-8")
    task = load_task("dataset", path=str(tmp_path / "t.csv"), eval_split="train")
    assert [e.answer for e in task.eval_examples()] == ["1", "2"]  # ints read as text
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pq.write_table(pa.table({"prompt": [chat], "answer": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(TaskError, match=r"row 0: the chat in 'prompt' must end with a user turn"):
        load_task("dataset", path=str(tmp_path / "c.parquet"), eval_split="train")


def test_missing_fields_and_files_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"row 0: no field 'question' \(fields: answer, id, pro"):
        load_task("jsonl", **files, prompt_field="question")
    # What print-config runs: options and files only, no data loaded.
    with pytest.raises(TaskError, match=r"eval: Path does not point to a file .*nope\.jsonl"):
        check_task_options("jsonl", train=files["train"], eval=tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match=r"data set path data/none\.parquet does not exist"):
        check_task_options("dataset", path="data/none.parquet")
    with pytest.raises(TaskError, match=r"data file .*gone\.parquet does not exist"):
        gone = {"test": [str(tmp_path / "gone.parquet")]}
        check_task_options("dataset", path="parquet", data_files=gone)
    with pytest.raises(TaskError, match=r"max_new_tokens: .*set as rollout\.max_new_tokens"):
        check_task_options("jsonl", **files, max_new_tokens=32)
    check_task_options("dataset", path="openai/gsm8k", subset="main")  # a hub id: not checked


def test_bad_jsonl_names_the_file_and_the_problem(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "answer": "b"\n')
    with pytest.raises(TaskError, match=r"bad\.jsonl.*JSON parse error"):
        load_task("jsonl", train=bad, eval=files["eval"])


def test_final_answer_verifier(files: dict[str, Path]) -> None:
    task = load_task("jsonl", **files)
    solution = task.eval_examples()[0]  # reference is a full solution: its text after "####"
    assert task.verify(solution, Response("3 and 4 make 7\n#### 7"))
    assert task.verify(solution, Response("####  7 \n"))  # whitespace-normalised
    assert task.verify(solution, Response("#### 9 ... no wait #### 7"))  # the last marker counts
    assert not task.verify(solution, Response("#### 8"))
    assert not task.verify(solution, Response("7"))  # no marker, no answer
    assert not task.verify(solution, Response("#### 7\nand then more"))  # last: to the end
    first = load_task("jsonl", **files, occurrence="first")
    assert first.verify(solution, Response("#### 7\nand then more #### 9"))  # its line only
    plain = task.train_examples()[0]  # reference is the bare answer
    assert task.verify(plain, Response("one plus one #### 2"))
    assert not task.verify(plain, Response("#### 2 apples"))
    other = load_task("jsonl", **files, marker="Answer:")
    assert other.verify(Example("q", "2"), Response("so... Answer:   2"))
    assert not other.verify(Example("q", "2"), Response("#### 2"))


def test_exact_and_math_verifiers(files: dict[str, Path]) -> None:
    exact = load_task("jsonl", **files, verifier="exact")
    assert exact.verify(Example("q", " a b "), Response("a b\n"))
    assert not exact.verify(Example("q", "a b"), Response("a  b"))
    math = load_task("jsonl", **files, verifier="math")
    half = Example("q", "0.5")
    assert math.verify(half, Response(r"so the answer is \boxed{1/2}"))
    assert math.verify(half, Response(r"$\frac{1}{2}$"))
    assert not math.verify(half, Response(r"\boxed{1/3}"))
    assert math.verify(Example("q", "She has 8.\n#### 72"), Response(r"\boxed{72}"))
    assert math.verify(Example("q", "x^2+2x+1"), Response(r"\boxed{(x+1)^2}"))  # symbolic
    assert not math.verify(half, Response("no number here"))


def test_custom_verifier_gets_the_example_and_the_response(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_verifiers.py").write_text(
        "def finished_with_id(example, response):\n"
        "    return response.finish_reason == 'eos' and example.fields['id'] == 7 "
        "and response.ids[-1] == 2\n"
        "NOT_CALLABLE = 3\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_verifiers", raising=False)
    task = load_task("jsonl", **files, verifier="my_verifiers:finished_with_id")
    example = task.train_examples()[0]
    assert task.verify(example, Response("2", (5, 2), "eos"))
    assert not task.verify(example, Response("2", (5, 6), "length"))
    with pytest.raises(TaskError, match="cannot import module 'no_such_module_xyz'"):
        load_task("jsonl", **files, verifier="no_such_module_xyz:f")
    with pytest.raises(TaskError, match="has no 'missing'"):
        load_task("jsonl", **files, verifier="my_verifiers:missing")
    with pytest.raises(TaskError, match="is a int, not a callable"):
        load_task("jsonl", **files, verifier="my_verifiers:NOT_CALLABLE")
    with pytest.raises(TaskError, match="unknown verifier 'fuzzy'"):
        load_task("jsonl", **files, verifier="fuzzy")
