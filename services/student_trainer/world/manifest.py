"""Where the built-in world lives and what its `world.json` says; reading only, no torch.

A world folder holds one `save_pretrained` folder per model (weights, config, generation config
and the shared tokenizer files) and a `world.json` manifest describing the task, the tokenizer
and every model, including its greedy eval accuracy as measured by the builder.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from tropd.trainer.tasks.addition import AdditionConfig, AdditionTask
from tropd.trainer.tasks.base import TaskError

WORLD_DIR_ENV = "TROPD_WORLD_DIR"
MANIFEST_NAME = "world.json"
# services/student_trainer/world/manifest.py -> the repository root is three folders above.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def builtin_world_dir() -> Path:
    """The committed world (`worlds/builtin` in the repository), or $TROPD_WORLD_DIR when set."""
    override = os.environ.get(WORLD_DIR_ENV)
    return Path(override) if override else _REPO_ROOT / "worlds" / "builtin"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StyleRecord(_Frozen):
    separator: str
    carry_in_first: bool
    example: str  # reference completion of the task's first eval problem in this style


class TaskRecord(_Frozen):
    name: str  # registry name for load_task
    config: AdditionConfig  # load_task(name, **config) rebuilds the exact pools
    max_new_tokens: int
    example_prompt: str
    styles: dict[str, StyleRecord]


class TokenizerRecord(_Frozen):
    sha256: str  # teacher.fingerprint digest, identical for every model of the world
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    vocab: dict[str, int]


class ModelRecord(_Frozen):
    path: str  # relative to the world folder
    description: str
    n_layer: int
    n_embd: int
    n_head: int
    parameters: int
    style_mix: dict[str, float]  # SFT data: style name -> share of training sequences
    sft_steps: int
    lr: float
    batch_size: int
    seed: int
    eval_accuracy: float  # greedy decoding on the task's eval set, verified by the task
    # share of eval completions exactly equal to the reference completion in each style
    eval_style_match: dict[str, float]
    eval_samples: list[str]  # greedy completions of the first eval problems
    weights_sha256: str


class WorldManifest(_Frozen):
    builder_version: int
    task: TaskRecord
    tokenizer: TokenizerRecord
    models: dict[str, ModelRecord]
    torch_version: str
    transformers_version: str

    def model_dir(self, world_dir: Path, name: str) -> Path:
        if name not in self.models:
            raise KeyError(f"world has no model {name!r}; it has {sorted(self.models)}")
        return world_dir / self.models[name].path


def load_manifest(world_dir: Path | None = None) -> WorldManifest:
    """Read `world.json` of `world_dir` (default: builtin_world_dir())."""
    world_dir = world_dir or builtin_world_dir()
    path = world_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no world manifest at {path}: build one with `tropd-train build-world --out "
            f"{world_dir}` or point ${WORLD_DIR_ENV} at an existing world"
        )
    try:
        return WorldManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise ValueError(f"{path}: not a valid world manifest: {error}") from error


def world_task(world_dir: Path | None = None) -> AdditionTask:
    """The task a world was built and evaluated on, with the exact same pools."""
    manifest = load_manifest(world_dir)
    if manifest.task.name != "addition":
        raise TaskError(f"world task {manifest.task.name!r} is not the built-in addition task")
    return AdditionTask(manifest.task.config)
