"""Build the built-in world from scratch: tokenizer, teacher, students, `world.json`.

    python -m tropd.trainer.world [--out worlds/builtin] [--only teacher,student] [--digits 4]
    python -m tropd.trainer.world --recipe long --out worlds/long   (the long-answer world)
    tropd-train build-world ...            (the same, through the trainer CLI)

Every model is a GPT-2 (`GPT2LMHeadModel`) trained by plain SFT (see `sft.py`) on a mix of the
task's styles, then measured by greedy decoding on the eval set and saved with
`save_pretrained` (safetensors) next to the shared tokenizer. One torch thread and fixed seeds
make the weights bit-identical from run to run on a given machine and torch version. The step
counts are pinned: the students' accuracy rises steeply with them (habit mix: 9% after 200
steps, 65% after 250; `default_spec` lists the calibration), and the defaults below were measured
to put each model where the benchmark needs it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.tasks.addition import STYLES, AdditionConfig, AdditionTask
from tropd.trainer.tasks.base import Response
from tropd.trainer.world.manifest import (
    MANIFEST_NAME,
    ModelRecord,
    StyleRecord,
    TaskRecord,
    TokenizerRecord,
    WorldManifest,
    builtin_world_dir,
    load_manifest,
)
from tropd.trainer.world.sft import (
    SftSettings,
    encode_problems,
    greedy_completions,
    train_sft,
)
from tropd.trainer.world.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
EVAL_SAMPLES = 3


class ModelSpec(BaseModel):
    """One model of the world: its size and its SFT recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str
    n_layer: int = Field(ge=1)
    n_embd: int = Field(ge=4)
    n_head: int = Field(4, ge=1)
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(20, ge=1)
    final_lr_fraction: float = Field(0.1, ge=0, le=1)
    style_mix: dict[str, float]  # style name -> sampling weight (normalised by the sampler)

    @field_validator("style_mix")
    @classmethod
    def _known_styles(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(STYLES))
        if unknown:
            raise ValueError(f"unknown styles {unknown}; known: {sorted(STYLES)}")
        if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {mix}")
        return mix


class WorldSpec(BaseModel):
    """Everything a build depends on, besides the machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: AdditionConfig = AdditionConfig()
    seed: int = 0  # model initialisation and SFT sampling, the same for every model
    models: dict[str, ModelSpec]


_HABIT_MIX = {"habit": 0.9, "teacher": 0.1}


def _student(description: str, steps: int, style_mix: dict[str, float]) -> ModelSpec:
    """Every student is 2 x 64 at lr 2e-3; only the data mix and the stopping step differ."""
    return ModelSpec(
        description=description, n_layer=2, n_embd=64, steps=steps, lr=2e-3, style_mix=style_mix
    )


def _teacher(description: str, steps: int) -> ModelSpec:
    """Every teacher is 4 x 128 at lr 1e-3, SFT in the teacher style only."""
    return ModelSpec(
        description=description, n_layer=4, n_embd=128, steps=steps, lr=1e-3,
        style_mix={"teacher": 1.0},
    )  # fmt: skip


def default_spec(digits: int = 4, seed: int = 0) -> WorldSpec:
    """The committed world's recipe. Step counts were calibrated for 4 digits and seed 0.

    Calibration runs (same recipe, styles drawn in another order) measured the greedy eval
    accuracy of a 2 x 64 student at lr 2e-3 against SFT steps. Habit mix: 200: 9%, 225: 36%,
    240: 59%, 250: 65%, 300: 78%, 310: 85%, 350: 91%, 400: 98%. Teacher style only: 240: 46%,
    250: 52%, 260: 57%. Hard mix: 250: 2%, 300: 55%. A 4 x 128 teacher: 100% at 500 steps. The
    built models' own numbers are in world.json (student 52%, matched 57%, strong 88%, hard
    56%). Another seed or digit count moves these: calibrate before relying on it.
    """
    teacher = _teacher("4 x 128 teacher, SFT in the teacher style only", 500)
    return WorldSpec(
        task=AdditionConfig(digits=digits),
        seed=seed,
        models={
            "teacher": teacher,
            "student": _student(
                "default demo student: 2 x 64, mostly the habit style, imperfect", 240, _HABIT_MIX
            ),
            "student-matched": _student(
                "matched-format control: 2 x 64, teacher style only, imperfect",
                260, {"teacher": 1.0},
            ),
            "student-strong": _student(
                "stronger start: 2 x 64, mostly the habit style, trained longer", 320, _HABIT_MIX
            ),
            "student-hard": _student(
                "hard mismatch: 2 x 64, mostly the hard style (carry in first), imperfect",
                300, {"hard": 0.9, "teacher": 0.1},
            ),
        },
    )


LONG_DIGITS = 12  # 121-token answers (+ eos), ~2.9x the default world's 41
LONG_WORLD_DIR = Path(__file__).resolve().parents[3] / "worlds" / "long"  # the committed one


def long_spec(digits: int = LONG_DIGITS, seed: int = 0) -> WorldSpec:
    """The long-answer world (worlds/long): answers ~2.9x longer than the default's.

    For the question whether a weighting that grows with position (`surprise`: `S_t` sums over
    the response so far) switches the outlier term off late in long answers. The default recipe's
    sizes, rates and data mixes on 12-digit addition; only the step counts differ (the longer
    task needs more). Calibrated for 12 digits and seed 0 on one CPU thread, greedy eval accuracy
    on the 256-example eval set against SFT steps. Teacher (4 x 128): 500: 81%, 1000: 100%.
    Habit student (2 x 64, lr 2e-3): 240: 0%, 1000: 3.5%, 1010: 66%, 1020: 99.6%, 1030: 100%,
    1060: 91%, 1100: 100%, 1250: 100%, 2000: 99.6%: a cliff around 1000-1020 steps and not
    monotonic after it (the student either has the long-range digit lookup or it has not), so
    nothing lands in 40-65%; the closest are `student` (1010, 66%) and `student-strong` (1060,
    91%). Another seed, digit count or torch version moves these: calibrate before relying on it.
    """
    teacher = _teacher(f"4 x 128 teacher, SFT in the teacher style only, {digits} digits", 1000)
    return WorldSpec(
        task=AdditionConfig(digits=digits),
        seed=seed,
        models={
            "teacher": teacher,
            "student": _student(
                f"long-answer student: 2 x 64, mostly the habit style, imperfect, {digits} digits",
                1010, _HABIT_MIX,
            ),
            "student-strong": _student(
                f"stronger start: 2 x 64, mostly the habit style, trained longer, {digits} digits",
                1060, _HABIT_MIX,
            ),
        },
    )


def _new_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, n_positions: int,
               seed: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        # No dropout: the data is unlimited and noise-free, and it would only slow the tiny
        # models down and make greedy accuracy depend on more than the step count.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # transformers warns when a model leaves it unset
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_model(name: str, spec: ModelSpec, world: WorldSpec, task: AdditionTask,
                 tokenizer: PreTrainedTokenizerBase, out_dir: Path, progress: bool) -> ModelRecord:
    started = time.perf_counter()
    source = encode_problems(task, tokenizer, task.train_problems(), sorted(spec.style_mix))
    sequence_length = source.ids_S_N_T.shape[2]
    model = _new_model(spec, tokenizer, 64 * math.ceil(sequence_length / 64), world.seed)
    settings = SftSettings(
        steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup_steps=spec.warmup_steps,
        seed=world.seed, final_lr_fraction=spec.final_lr_fraction, style_mix=spec.style_mix,
    )
    losses = train_sft(model, source, settings, progress=progress)

    eval_examples = task.eval_examples()
    completions = greedy_completions(model, tokenizer, eval_examples, task.max_new_tokens)
    pairs = list(zip(eval_examples, completions, strict=True))
    accuracy = sum(task.verify(e, Response(c)) for e, c in pairs) / len(pairs)
    style_match = {
        style_name: sum(c == task.reference_completion(e, style) for e, c in pairs) / len(pairs)
        for style_name, style in STYLES.items()
    }

    final_dir, staging_dir = out_dir / name, out_dir / f".{name}.tmp"
    shutil.rmtree(staging_dir, ignore_errors=True)
    model.save_pretrained(staging_dir)
    tokenizer.save_pretrained(staging_dir)
    shutil.rmtree(final_dir, ignore_errors=True)
    staging_dir.rename(final_dir)

    log.info("%s: %d params, %d steps, final loss %.4f, eval accuracy %.3f, style match %s, %.0fs",
             name, model.num_parameters(), spec.steps, losses[-1], accuracy, style_match,
             time.perf_counter() - started)
    return ModelRecord(
        path=name, description=spec.description, n_layer=spec.n_layer, n_embd=spec.n_embd,
        n_head=spec.n_head, parameters=model.num_parameters(), style_mix=spec.style_mix,
        sft_steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size, seed=world.seed,
        eval_accuracy=accuracy, eval_style_match=style_match,
        eval_samples=completions[:EVAL_SAMPLES],
        weights_sha256=_sha256(final_dir / "model.safetensors"),
    )


def _task_record(task: AdditionTask) -> TaskRecord:
    example = task.eval_examples()[0]
    return TaskRecord(
        name="addition", config=task.config, max_new_tokens=task.max_new_tokens,
        example_prompt=example.prompt,
        styles={
            name: StyleRecord(separator=style.separator, carry_in_first=style.carry_in_first,
                              example=task.reference_completion(example, style))
            for name, style in STYLES.items()
        },
    )


def _tokenizer_record(tokenizer: PreTrainedTokenizerBase) -> TokenizerRecord:
    fingerprint = fingerprint_of(tokenizer)
    return TokenizerRecord(
        sha256=fingerprint.sha256, vocab_size=fingerprint.vocab_size, bos_id=fingerprint.bos_id,
        eos_id=fingerprint.eos_id, pad_id=fingerprint.pad_id, unk_id=tokenizer.unk_token_id,
        vocab=dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])),
    )


def build_world(out_dir: Path, seed: int = 0, progress: bool = True, *, digits: int = 4,
                only: Sequence[str] | None = None, spec: WorldSpec | None = None) -> WorldManifest:
    """Train and save the world's models into `out_dir` and write its `world.json`.

    Args:
        out_dir: the world folder; created if needed.
        seed: initialisation and SFT sampling seed (ignored when `spec` is given).
        progress: show progress bars.
        digits: operand digits of the task (ignored when `spec` is given).
        only: build just these models, keeping the others' manifest entries (the existing
            manifest must describe the same task and builder version).
        spec: a full recipe instead of `default_spec(digits, seed)` (tests use tiny ones).
    Returns:
        The manifest written to out_dir/world.json.
    """
    spec = spec or default_spec(digits, seed)
    names = list(spec.models) if only is None else list(only)
    missing = sorted(set(names) - set(spec.models))
    if missing:
        raise ValueError(f"unknown models {missing}; the recipe has {sorted(spec.models)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    task, tokenizer = AdditionTask(spec.task), build_tokenizer()
    task_record, tokenizer_record = _task_record(task), _tokenizer_record(tokenizer)

    records: dict[str, ModelRecord] = {}
    if only is not None and (out_dir / MANIFEST_NAME).is_file():
        previous = load_manifest(out_dir)
        if (previous.task, previous.tokenizer, previous.builder_version) != (
            task_record, tokenizer_record, BUILDER_VERSION
        ):
            raise ValueError(f"{out_dir} was built for another task, tokenizer or builder "
                             "version; rebuild every model (drop --only)")
        records = dict(previous.models)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible training; the models are too small to gain
    try:
        for name in names:
            log.info("building %s: %s", name, spec.models[name].description)
            records[name] = _build_model(
                name, spec.models[name], spec, task, tokenizer, out_dir, progress
            )
    finally:
        torch.set_num_threads(threads)

    manifest = WorldManifest(
        builder_version=BUILDER_VERSION, task=task_record, tokenizer=tokenizer_record,
        models={name: records[name] for name in spec.models if name in records},
        torch_version=torch.__version__, transformers_version=transformers.__version__,
    )
    staging = out_dir / f".{MANIFEST_NAME}.tmp"
    staging.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    staging.replace(out_dir / MANIFEST_NAME)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-world",
        description="Train the built-in world (teacher and students on N-digit addition) from "
        "scratch and save it as save_pretrained folders plus world.json.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help=f"world folder (default: {builtin_world_dir()}; the long recipe: "
                        f"{LONG_WORLD_DIR})")
    parser.add_argument("--only", default=None,
                        help="comma-separated models to (re)build, e.g. teacher,student")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--digits", type=int, default=None,
                        help="operand digits (default: 4; the long recipe: 12)")
    parser.add_argument("--recipe", choices=("default", "long"), default="default",
                        help="default: the built-in world's five models; long: the long-answer "
                        "world's teacher and two students (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    started = time.perf_counter()
    try:  # bad options fail here, before any training (exit 2 with the reason)
        if args.recipe == "long":
            spec = long_spec(LONG_DIGITS if args.digits is None else args.digits, args.seed)
            args.out = args.out or LONG_WORLD_DIR
        else:
            spec = default_spec(4 if args.digits is None else args.digits, args.seed)
            args.out = args.out or builtin_world_dir()
    except ValueError as exc:
        parser.error(str(exc))
    unknown = sorted(set(only or ()) - set(spec.models))
    if unknown:
        parser.error(f"--only: unknown models {unknown}; the {args.recipe} recipe has "
                     f"{sorted(spec.models)}")
    manifest = build_world(args.out, args.seed, not args.quiet, only=only, spec=spec)
    print(f"world written to {args.out} in {time.perf_counter() - started:.0f}s")
    for name, record in manifest.models.items():
        print(f"  {name:16s} {record.parameters:>9,d} params  {record.sft_steps:4d} steps  "
              f"eval accuracy {record.eval_accuracy:.3f}")
    return 0
