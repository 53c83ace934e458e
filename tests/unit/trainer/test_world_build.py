"""The world builder on a tiny recipe: loadable folders, a manifest, bit-identical rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.tasks.addition import AdditionConfig, AdditionTask
from tropd.trainer.world import build as build_module
from tropd.trainer.world import build_world, load_manifest, world_task
from tropd.trainer.world.build import ModelSpec, WorldSpec, default_spec, long_spec, main
from tropd.trainer.world.manifest import WorldManifest


def _tiny_spec() -> WorldSpec:
    tiny = {"n_layer": 1, "n_embd": 16, "n_head": 2, "steps": 4, "lr": 1e-3, "batch_size": 8,
            "warmup_steps": 2}
    return WorldSpec(
        task=AdditionConfig(digits=2, train_size=64, eval_size=8),
        seed=3,
        models={
            "teacher": ModelSpec(description="t", style_mix={"teacher": 1.0}, **tiny),
            "student": ModelSpec(description="s", style_mix={"habit": 0.9, "teacher": 0.1}, **tiny),
        },
    )


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "tiny"
    build_world(out, progress=False, spec=_tiny_spec())
    return out


def test_writes_loadable_folders_and_a_manifest(tiny_world: Path) -> None:
    manifest = load_manifest(tiny_world)
    assert sorted(manifest.models) == ["student", "teacher"]
    assert manifest.task.config.digits == 2 and manifest.task.max_new_tokens == 22
    assert world_task(tiny_world).eval_examples() == world_task(tiny_world).eval_examples()
    assert len(world_task(tiny_world).eval_examples()) == 8
    fingerprints = set()
    for name, record in manifest.models.items():
        folder = manifest.model_dir(tiny_world, name)
        assert (folder / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        fingerprints.add(fingerprint_of(tokenizer).sha256)
        assert model.num_parameters() == record.parameters
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
        assert 0.0 <= record.eval_accuracy <= 1.0 and len(record.eval_samples) == 3
    assert fingerprints == {manifest.tokenizer.sha256}


def test_same_seed_gives_identical_weights(tiny_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_world(again, progress=False, spec=_tiny_spec())
    assert (again / "world.json").read_text() == (tiny_world / "world.json").read_text()
    for name in ("teacher", "student"):
        first = load_file(tiny_world / name / "model.safetensors")
        second = load_file(again / name / "model.safetensors")
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_another_seed_gives_other_weights(tiny_world: Path, tmp_path: Path) -> None:
    other = build_world(tmp_path / "other", progress=False,
                        spec=_tiny_spec().model_copy(update={"seed": 4}))
    assert other.models["teacher"].weights_sha256 != (
        load_manifest(tiny_world).models["teacher"].weights_sha256
    )


def test_only_rebuilds_the_named_models(tiny_world: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    build_world(copy, progress=False, spec=_tiny_spec())
    before = json.loads((copy / "world.json").read_text())
    (copy / "student" / "model.safetensors").unlink()
    manifest = build_world(copy, progress=False, spec=_tiny_spec(), only=["student"])
    assert (copy / "student" / "model.safetensors").is_file()
    assert json.loads(manifest.model_dump_json()) == before
    with pytest.raises(ValueError, match="unknown models"):
        build_world(copy, progress=False, spec=_tiny_spec(), only=["professor"])


def test_spec_rejects_unknown_styles() -> None:
    with pytest.raises(ValidationError, match="unknown styles \\['shouty'\\]"):
        ModelSpec(description="x", n_layer=1, n_embd=8, steps=1, lr=1e-3, style_mix={"shouty": 1})


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--only" in capsys.readouterr().out


def test_long_recipe_has_answers_several_times_longer() -> None:
    """Issue 8's long-answer world: the default recipe's teacher and habit student, more digits."""
    long, default = long_spec(), default_spec()
    assert sorted(long.models) == ["student", "student-strong", "teacher"]
    for name in ("teacher", "student", "student-strong"):  # only the steps differ
        same = {"description": "", "steps": 1}
        assert long.models[name].model_copy(update=same) == default.models[name].model_copy(
            update=same
        )
    ratio = AdditionTask(long.task).max_new_tokens / AdditionTask(default.task).max_new_tokens
    assert ratio >= 2.5


def test_cli_long_recipe_builds_the_long_spec(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    seen = {}

    def fake_build(out, seed, progress, *, only=None, spec=None):  # noqa: ANN001, ANN202
        seen.update(out=out, spec=spec, only=only)
        return WorldManifest.model_construct(models={})

    monkeypatch.setattr(build_module, "build_world", fake_build)
    assert main(["--recipe", "long", "--out", str(tmp_path), "--only", "teacher", "--quiet"]) == 0
    assert seen == {"out": tmp_path, "spec": long_spec(), "only": ["teacher"]}


def test_trainer_cli_forwards_build_world_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`tropd-train build-world ...` hands every option (and --help) to the world builder."""
    from tropd.trainer.cli import main as trainer_main

    with pytest.raises(SystemExit) as info:
        trainer_main(["build-world", "--help"])
    assert info.value.code == 0
    assert "--recipe" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--only", "nope"], "--only: unknown models ['nope']"),
        (["--digits", "0"], "greater than or equal to 1"),
        (["--recipe", "tiny"], "invalid choice"),
    ],
)
def test_bad_build_options_exit_2_before_training(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tropd.trainer.cli import main as trainer_main

    with pytest.raises(SystemExit) as info:
        trainer_main(["build-world", "--out", str(tmp_path / "w"), *args])
    assert info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing was built
