"""Trainer config: YAML + dotted overrides, unknown keys and bad values named in the error."""

from pathlib import Path

import pytest

from tropd.trainer.config import ConfigError, dump_config, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[3]


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["loss.method=opd", "optim.lr=5e-5", "train.steps=3", "name=x"])
    assert cfg.loss.method == "opd"
    assert cfg.optim.lr == pytest.approx(5e-5)
    assert cfg.train.steps == 3
    assert cfg.name == "x"
    assert cfg.rollout.samples_per_prompt == 4  # untouched default


def test_every_shipped_recipe_loads() -> None:
    recipes = sorted((REPO / "configs").rglob("*.yaml"))
    assert recipes, "configs/ has no recipes"
    for path in recipes:
        load_config(path)


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["loss.outlier=mask", "task.options={digits: 4}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("loss.method=ppo", "loss.method"),
        ("train.steps=0", "train.steps"),
        ("rollout.temperature=-1", "rollout.temperature"),
        ("guidance.fraction=2", "guidance.fraction"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_malformed_override_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["no-equals-sign"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_guidance_file_needs_a_path() -> None:
    with pytest.raises(ConfigError, match="drafts_file"):
        load_config(None, ["guidance.fraction=0.5", "guidance.source=file"])


def test_student_dtype_was_split_in_two() -> None:
    with pytest.raises(ConfigError, match="student.param_dtype .* student.compute_dtype"):
        load_config(None, ["student.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="param_dtype=float32"):
        load_config(None, ["student.compute_dtype=float16", "student.param_dtype=float16"])
    cfg = load_config(None, ["student.compute_dtype=bfloat16", "optim.micro_batch_tokens=4096"])
    assert cfg.student.param_dtype == "float32"  # master weights stay float32 by default
    assert cfg.optim.micro_batch_tokens == 4096 and not cfg.optim.gradient_checkpointing


def test_load_student_precision_and_checkpointing(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from tropd.trainer.setup import load_student

    cfg = load_config(None, ["student.compute_dtype=bfloat16", "optim.gradient_checkpointing=true"])
    student = load_student(cfg)
    assert next(student.model.parameters()).dtype == torch.float32
    assert student.precision.compute_dtype == torch.bfloat16 and student.precision.scaler is None
    assert any(getattr(m, "gradient_checkpointing", False) for m in student.model.modules())
    student = load_student(load_config(None, ["student.param_dtype=bfloat16"]))
    assert next(student.model.parameters()).dtype == torch.bfloat16
    assert "round away" in caplog.text
