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
