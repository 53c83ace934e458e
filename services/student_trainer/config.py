"""Trainer configuration: frozen models that reject unknown keys, YAML plus dotted overrides.

Defaults live here and only here. A recipe is one YAML file (see configs/); the command line adds
`key.sub=value` overrides, parsed as YAML scalars (`loss.method=opd`, `optim.lr=1e-4`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tropd.errors import ConfigError
from tropd.trainer.losses.config import LossConfig
from tropd.trainer.losses.registry import needs_student_topk


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


DType = Literal["float32", "bfloat16", "float16"]


class StudentConfig(_Frozen):
    path: str = Field(
        "builtin:student", description="HF folder or hub id; builtin:NAME = world model"
    )
    device: str = "cpu"
    param_dtype: DType = Field(
        "float32",
        description="weights, gradients and AdamW state (master weights); below float32, steps "
        "at small learning rates round away (at lr 5e-6 a bf16 step moved ~5% of weights)",
    )
    compute_dtype: DType = Field(
        "float32",
        description="forward passes (rollout, update, eval) under torch.autocast; float16 adds "
        "loss scaling; log-softmax statistics stay float32",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_dtype(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dtype" in data:
            raise ValueError(
                "student.dtype was split in two: student.param_dtype (weights and optimizer "
                "state, keep float32) and student.compute_dtype (autocast, e.g. bfloat16 on GPU)"
            )
        return data

    @model_validator(mode="after")
    def _scaler_needs_float32(self) -> StudentConfig:
        if self.compute_dtype == "float16" and self.param_dtype != "float32":
            raise ValueError(
                "student.compute_dtype=float16 needs student.param_dtype=float32 (its loss "
                "scaler unscales float32 gradients)"
            )
        return self


class TeacherConfig(_Frozen):
    target: str = Field(
        "localhost:50051",
        description="host:port of the teacher gRPC service, or several replicas balanced round "
        "robin with health checks: dns:///teacher-headless:50051 or ipv4:HOST:PORT,HOST:PORT",
    )
    token: str | None = Field(None, description="job bearer token; default $TEACHER_TOKEN")
    timeout_s: float = Field(60.0, gt=0, description="deadline of one call attempt, seconds")
    max_retries: int = Field(
        8,
        ge=0,
        description="retries of UNAVAILABLE/RESOURCE_EXHAUSTED per call outside training steps "
        "(start-up, eval, generate-drafts); training steps ride outages (outage_s) instead",
    )
    outage_s: float = Field(
        900.0,
        ge=0,
        description="how long a training step keeps retrying a teacher that is unreachable, "
        "busy or slow (UNAVAILABLE, RESOURCE_EXHAUSTED with a hint, DEADLINE_EXCEEDED) before "
        "the run checkpoints and exits 1; 15 min covers a teacher restart with a model reload",
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Score requests a step sends at once (its rollouts split into that many "
        "chunks at least), so that every replica behind the target works; null: one per "
        "replica the target resolves to (1 for host:port: one request after another, which "
        "keeps a one-teacher run bit-reproducible; scores agree across batchings only to ~2e-6)",
    )
    replica_tolerance: float = Field(
        0.25,
        gt=0,
        description="largest |log-prob difference| (nats) allowed between two replicas of "
        "teacher.target on the start-up probe, else the run refuses to start. Float32 replicas "
        "agree to ~1e-5; bf16 on CUDA scored in different batches differs by up to 0.18 "
        "(docs/gpu.md); different weights differ by whole nats",
    )
    wait_ready_s: float = Field(120.0, ge=0, description="how long to wait for a ready teacher")
    tls_ca_file: str | None = Field(None, description="PEM CA bundle: connect over TLS")
    tls_cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    tls_key_file: str | None = Field(None, description="PEM key of tls_cert_file")


class RoutingConfig(_Frozen):
    """Which of `teachers` grades an example's rollouts."""

    field: str | None = Field(
        None, description="example field (a data set column) whose value names the teacher"
    )
    default: str | None = Field(
        None,
        description="teacher of examples without the field, and of guidance drafts; null: "
        "the first teacher by name, and an example without the field is an error",
    )


TEACHER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class TaskConfig(_Frozen):
    name: str = Field("addition", description="'addition' (built-in), 'dataset' or 'jsonl'")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the task's own options, checked by the task"
    )
    eval_size: int = Field(256, ge=1, description="eval examples used (first N of the eval set)")
    chat_template: bool | None = Field(
        None, description="render prompts with the tokenizer's chat template; null: when it has one"
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra template variables, e.g. {enable_thinking: false}"
    )
    system_prompt: str | None = Field(
        None, description="system turn of every prompt (chat template only); an example's own wins"
    )
    sampling: Literal["epochs", "replacement"] = Field(
        "epochs",
        description="epochs: each prompt once per epoch, reshuffled per epoch from train.seed; "
        "replacement: independent draws",
    )


class RolloutConfig(_Frozen):
    prompts_per_step: int = Field(32, ge=1)
    samples_per_prompt: int = Field(4, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="the one response budget: rollouts, guidance drafts and evaluation; "
        "null: the task's own (addition: its exact answer length; data sets: 1024)",
    )
    batch_size: int = Field(
        256, ge=1, description="rows per generate call; bounds the KV cache (rows x tokens)"
    )
    engine: Literal["generate", "paged"] = Field(
        "generate",
        description="how the student samples: generate (HF generate, batch_size rows per call, "
        "each call waits for its longest row) or paged (transformers continuous batching with "
        "paged attention: a finished row frees its slot for the next; batch_size rows at once)",
    )
    overlap: bool = Field(
        True,
        description="send rows to the teacher as the engine finishes them (overlap_chunk_rows "
        "at a time, teacher.max_in_flight requests at once) instead of after the last one",
    )
    overlap_chunk_rows: int = Field(
        32, ge=1, description="finished rows per Score request sent while the rollout runs"
    )


class GuidanceConfig(_Frozen):
    fraction: float = Field(0.0, ge=0, le=1, description="share of prompts given a teacher draft")
    source: Literal["teacher", "file"] = "teacher"
    drafts_file: str | None = None
    temperature: float = Field(
        0.0,
        ge=0,
        description="teacher draft temperature, 0 = greedy, chosen by measurement "
        "(benchmarks/draft_temperature.py): greedy drafts were all correct on both built-in "
        "worlds vs 77% and 82% at T=1, sft on them ended 6 points higher, guided TrOPD even",
    )


class OptimConfig(_Frozen):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward")
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="token budget per forward/backward (rows x padded length); sequences are "
        "packed by length; null = micro_batch_size consecutive rollouts",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="the learning rate rises linearly from lr/warmup_steps at the first step to "
        "lr at step warmup_steps, then stays constant; 0 = constant lr from the start",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer in backward (less memory, ~1/3 more time)"
    )
    logits_chunk_mib: float = Field(
        64.0,
        gt=0,
        description="float32 logits per chunk of positions in the update; its peak is a few such "
        "blocks whatever the vocabulary or length",
    )


class TrainConfig(_Frozen):
    steps: int = Field(100, ge=1)
    seed: int = 0
    eval_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_last: int = Field(2, ge=1)
    run_dir: str = "runs/default"
    resume: bool = True
    status_port: int | None = Field(0, ge=0, description="HTTP status port; 0 = any, null = off")
    status_host: str = Field("127.0.0.1", description="status bind address; 0.0.0.0 in containers")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's")
    progress: bool = Field(True, description="progress bars (ours and the libraries'); false: none")
    tensorboard: bool = True
    keep_best: bool = Field(
        False,
        description="keep the best-eval student (the start included) in run_dir/best/ (HF "
        "format, `tropd-train export-best`)",
    )
    early_stop_evals: int | None = Field(
        None, ge=1, description="stop after this many evals in a row without a new best; null: off"
    )
    dip_warn_points: float | None = Field(
        10.0,
        gt=0,
        description="warn when eval accuracy falls this many points below the start, naming the "
        "training metrics that moved most; null: never",
    )
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="none: one process; ddp / fsdp (FSDP2): one process per device under "
        "torchrun, each rolling out its share of the step's prompts (docs/architecture.md)",
    )
    collective_timeout_s: float = Field(
        600.0, gt=0, description="ddp/fsdp: a collective waiting this long fails the job"
    )


class RunConfig(_Frozen):
    name: str = "tropd"
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    teachers: dict[str, TeacherConfig] = Field(
        default_factory=dict,
        description="several teachers by name, each a teacher section (target, token, TLS...), "
        "chosen per example by routing.field; empty: the one `teacher` grades everything",
    )
    routing: RoutingConfig = RoutingConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        if (
            self.guidance.source == "file"
            and self.guidance.fraction > 0
            and not self.guidance.drafts_file
        ):
            raise ValueError("guidance.source=file needs guidance.drafts_file")
        if self.teachers:
            bad = [n for n in self.teachers if not TEACHER_NAME.fullmatch(n)]
            if bad:
                raise ValueError(f"teachers: names {bad} must match {TEACHER_NAME.pattern}")
            if not self.routing.field:
                raise ValueError("teachers needs routing.field (the example field naming one)")
            if self.routing.default is not None and self.routing.default not in self.teachers:
                raise ValueError(
                    f"routing.default {self.routing.default!r} is not one of the teachers "
                    f"{sorted(self.teachers)}"
                )
        elif self.routing.field or self.routing.default:
            raise ValueError("routing needs teachers (a named map); one teacher needs none")
        if self.rollout.engine == "paged" and needs_student_topk(self.loss):
            raise ValueError(
                f"loss {self.loss.method!r} reads the student's own top-k ids, which only "
                "rollout.engine=generate records; use it, or another loss with paged"
            )
        if self.rollout.engine == "paged" and self.train.parallel != "none":
            raise ValueError(
                f"train.parallel={self.train.parallel} seeds each prompt's samples on its own "
                "(so ranks roll out what one process would), which only rollout.engine=generate "
                "does; use it"
            )
        if self.train.parallel == "fsdp" and self.student.compute_dtype == "float16":
            raise ValueError(
                "train.parallel=fsdp with student.compute_dtype=float16: float16 loss scaling "
                "is not wired for sharded gradients; use bfloat16"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Load a recipe YAML (or the defaults when path is None) and apply dotted overrides.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key or out-of-range value.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(list(overrides)))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc


def describe_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per config key, `key = default  description` (its first sentence), from the
    models themselves: what `tropd-train run --help` lists."""
    lines = []
    for name, field in model.model_fields.items():
        key = prefix + name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(describe_keys(annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        about = re.split(r"\.\s+(?=[A-Z`(])", " ".join((field.description or "").split()))[0]
        lines.append(f"{key} = {yaml.safe_dump(default, default_flow_style=True).strip()}"
                     f"{'  ' + about if about else ''}".replace("\n...", ""))  # fmt: skip
    return lines


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, in field order (what `print-config` shows and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
