"""The committed built-in world (worlds/builtin): it loads, it is what world.json says it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.tasks import Response, load_task
from tropd.trainer.world import builtin_world_dir, load_manifest, world_task
from tropd.trainer.world.manifest import WORLD_DIR_ENV
from tropd.trainer.world.sft import greedy_completions
from tropd.trainer.world.tokenizer import build_tokenizer

WORLD = Path(__file__).resolve().parents[3] / "worlds" / "builtin"
MODELS = ["teacher", "student", "student-matched", "student-strong", "student-hard"]


def test_builtin_world_dir_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORLD_DIR_ENV, raising=False)
    assert builtin_world_dir() == WORLD
    monkeypatch.setenv(WORLD_DIR_ENV, str(tmp_path))
    assert builtin_world_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="build-world"):
        load_manifest()


def test_manifest_describes_the_default_task_and_tokenizer() -> None:
    manifest = load_manifest(WORLD)
    assert list(manifest.models) == MODELS
    assert world_task(WORLD).eval_examples() == load_task("addition").eval_examples()
    assert manifest.tokenizer.sha256 == fingerprint_of(build_tokenizer()).sha256


def test_accuracies_sit_where_the_benchmark_needs_them() -> None:
    models = load_manifest(WORLD).models
    assert models["teacher"].eval_accuracy >= 0.98
    assert 0.4 <= models["student"].eval_accuracy <= 0.7
    assert 0.4 <= models["student-matched"].eval_accuracy <= 0.75
    assert 0.8 <= models["student-strong"].eval_accuracy <= 0.95
    assert 0.2 <= models["student-hard"].eval_accuracy <= 0.8
    # Teacher and habit students genuinely disagree: neither ever writes the other's style.
    assert models["teacher"].eval_style_match["habit"] == 0.0
    assert models["student"].eval_style_match["teacher"] == 0.0
    assert models["student-hard"].eval_style_match["hard"] > 0.0


def test_committed_files_stay_small() -> None:
    total = sum(p.stat().st_size for p in WORLD.rglob("*") if p.is_file())
    assert total < 8 * 2**20


@pytest.mark.parametrize("name", MODELS)
def test_each_model_loads_and_scores_what_the_manifest_says(name: str) -> None:
    manifest = load_manifest(WORLD)
    folder = manifest.model_dir(WORLD, name)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert fingerprint_of(tokenizer).sha256 == manifest.tokenizer.sha256
    assert model.num_parameters() == manifest.models[name].parameters
    task = world_task(WORLD)
    examples = task.eval_examples()
    completions = greedy_completions(model, tokenizer, examples, task.max_new_tokens)
    accuracy = sum(task.verify(e, Response(c)) for e, c in zip(examples, completions, strict=True))
    accuracy /= len(examples)
    # Greedy decoding can flip on float noise from another torch build: allow a few problems.
    assert accuracy == pytest.approx(manifest.models[name].eval_accuracy, abs=3 / len(examples))
    if name == "teacher":  # the teacher writes the teacher style, token for token
        assert completions[:8] == [task.reference_completion(e) for e in examples[:8]]

