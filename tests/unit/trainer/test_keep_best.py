"""BestKeeper on a real tiny model: saves only new bests (atomically, loadable), keeps a record
across a restart, counts evals without improvement; export of the kept student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.errors import ConfigError
from tropd.trainer.config import load_config
from tropd.trainer.keep_best import BestKeeper, export_best, read_best
from tropd.trainer.world import builtin_world_dir


@pytest.fixture(scope="module")
def student() -> tuple[torch.nn.Module, object]:
    path = builtin_world_dir() / "student"
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _first_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(model.parameters()).detach().clone()


def test_keeps_the_best_not_the_last(tmp_path: Path, student: tuple) -> None:
    model, tokenizer = student
    keeper = BestKeeper(tmp_path, keep=True, early_stop_evals=None)
    assert keeper.observe(0, 0.5, model, tokenizer)
    saved = _first_weight(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # a later, worse student
    assert not keeper.observe(10, 0.4, model, tokenizer)
    assert not keeper.observe(20, 0.5, model, tokenizer)  # a tie is not a new best
    assert read_best(tmp_path).step == 0
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    torch.testing.assert_close(_first_weight(kept), saved)
    assert keeper.observe(30, 0.7, model, tokenizer)
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {
        "step": 30,
        "accuracy": 0.7,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp folder left
    with torch.no_grad():
        next(model.parameters()).sub_(1.0)


def test_restart_keeps_the_record_and_counts_history(tmp_path: Path, student: tuple) -> None:
    model, tokenizer = student
    BestKeeper(tmp_path, keep=True, early_stop_evals=None).observe(10, 0.8, model, tokenizer)
    history = [(0, 0.5), (10, 0.8), (20, 0.6)]
    again = BestKeeper(tmp_path, keep=True, early_stop_evals=2, history=history)
    assert again.best is not None and (again.best.step, again.best.accuracy) == (10, 0.8)
    assert again.since_best == 1 and not again.should_stop
    assert not again.observe(30, 0.7, model, tokenizer)
    assert again.should_stop
    assert read_best(tmp_path).step == 10


def test_early_stop_without_keeping(tmp_path: Path, student: tuple) -> None:
    model, tokenizer = student
    keeper = BestKeeper(tmp_path, keep=False, early_stop_evals=1)
    keeper.observe(0, 0.5, model, tokenizer)
    assert not keeper.should_stop
    keeper.observe(10, 0.5, model, tokenizer)
    assert keeper.should_stop
    assert not (tmp_path / "best").exists()


def test_export_best(tmp_path: Path, student: tuple) -> None:
    model, tokenizer = student
    with pytest.raises(FileNotFoundError, match="keep_best"):
        export_best(tmp_path, tmp_path / "out")
    BestKeeper(tmp_path, keep=True, early_stop_evals=None).observe(0, 0.5, model, tokenizer)
    assert export_best(tmp_path, tmp_path / "out").accuracy == 0.5
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_bad_keys_name_themselves() -> None:
    with pytest.raises(ConfigError, match="early_stop_evals"):
        load_config(None, ["train.early_stop_evals=0"])
    with pytest.raises(ConfigError, match="dip_warn_points"):
        load_config(None, ["train.dip_warn_points=-1"])
    with pytest.raises(ConfigError, match="student_topk"):
        load_config(None, ["loss.student_topk=0"])
