"""Everything on the student's side a run needs before step 0, and its refusals.

Small constructors the loop calls in order: `load_student`, `load_data` (the task, the prompt
format, and a decode round trip that warns when text does not survive the tokenizer),
`drafts_source`, `make_optimizer`, `start_status`. Each refusal is a SetupError that says what
is wrong and how to fix it. Connecting to the teacher and checking that it fits this student
(between `load_data` and `drafts_source`) is `teacher_link.py`'s job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tropd.output_head import OutputHead
from tropd.trainer.config import OptimConfig, RunConfig, TaskConfig
from tropd.trainer.distributed import Ranks
from tropd.trainer.errors import SetupError
from tropd.trainer.guidance import DraftRequest, Drafts, load_drafts
from tropd.trainer.precision import DTYPES, Precision
from tropd.trainer.prompts import PromptCodec, prompt_format, round_trip_losses, stop_ids
from tropd.trainer.rollout_engines import GenerateEngine, RolloutEngine, make_engine
from tropd.trainer.run_status import TrainerStatus
from tropd.trainer.status_server import StatusServer
from tropd.trainer.tasks import TaskError, load_task
from tropd.trainer.tasks.base import Example, Task
from tropd.trainer.world import builtin_world_dir

if TYPE_CHECKING:  # teacher_link imports Student and Data from here
    from tropd.trainer.teacher_link import Teacher

log = logging.getLogger(__name__)

GenerationEos = int | list[int] | None


@dataclass(frozen=True)
class Student:
    """The model being trained, its tokenizer and how it computes (the optimizer is the loop's)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    precision: Precision = Precision()
    ranks: Ranks = field(default_factory=Ranks.single)  # train.parallel's wrapper and rank
    # What samples it (`rollout.engine`): one for the run, so an engine holding its own copy
    # of the weights keeps it across steps (`load_weights` after each update).
    engine: RolloutEngine = field(default_factory=GenerateEngine)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def generation_eos(self) -> GenerationEos:
        """The generation config's eos ids (Qwen and Llama 3 list several)."""
        return self.model.generation_config.eos_token_id  # type: ignore[no-any-return]

    @property
    def vocab_rows(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])


@dataclass(frozen=True)
class Data:
    """The task, its examples, how they become prompt ids (`codec`), and the response budget
    of every rollout, guidance draft and evaluation."""

    task: Task
    train: list[Example]
    eval: list[Example]
    codec: PromptCodec
    max_new_tokens: int


def resolve_model_path(path: str) -> str:
    """`builtin:NAME` names a model of the built-in world; anything else is used as given."""
    if path.startswith("builtin:"):
        folder = builtin_world_dir() / path.removeprefix("builtin:")
        if not folder.is_dir():
            raise SetupError(
                f"built-in model {path!r} not found at {folder}; run `tropd-train build-world`"
            )
        return str(folder)
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise SetupError(f"model folder {path} does not exist")
    return path


def task_from_config(cfg: TaskConfig) -> Task:
    try:
        return load_task(cfg.name, **cfg.options)
    except TaskError as exc:
        raise SetupError(str(exc)) from exc


def load_student(cfg: RunConfig, ranks: Ranks | None = None) -> Student:
    """The student in `student.param_dtype` on its device, with gradient checkpointing when
    `optim.gradient_checkpointing`, its output layer checked against its own logits (the update
    reads log-probs from hidden states through it), and its autocast precision; wrapped in DDP
    or FSDP2 when `ranks` is distributed (build the optimizer after this)."""
    path = resolve_model_path(cfg.student.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.student.param_dtype])
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot load the student from {path!r}: {exc}") from exc
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise SetupError(f"student tokenizer at {path} needs both a pad and an eos token")
    if cfg.student.param_dtype != "float32":
        log.warning(
            "student.param_dtype=%s: AdamW steps %s weights, and small updates round away; "
            "keep float32 and set student.compute_dtype for bf16/fp16 compute",
            cfg.student.param_dtype, cfg.student.param_dtype,
        )  # fmt: skip
    if cfg.optim.gradient_checkpointing:
        enable_checkpointing(model)
    model = model.to(cfg.student.device)  # type: ignore[arg-type]
    try:
        OutputHead.of(model).check_against_model(
            model, torch.tensor([int(tokenizer.eos_token_id)] * 4, device=model.device)
        )
    except ValueError as exc:
        raise SetupError(f"student at {path}: {exc}") from exc
    ranks = ranks or Ranks.single()
    ranks.share(cfg.rollout.prompts_per_step)  # refuses an uneven split before anything runs
    ranks.wrap(model)
    precision = Precision.of(cfg.student.compute_dtype, cfg.student.device)
    return Student(model, tokenizer, precision, ranks, make_engine(cfg.rollout))


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in backward (transformers' own; non-reentrant, so inputs
    need not require grad). The method was renamed during transformers 5."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_tokenizer(cfg: RunConfig) -> tuple[PreTrainedTokenizerBase, GenerationEos]:
    """The student's tokenizer and its generation config's eos ids, without loading weights
    (for commands that only encode: the demo's teacher accuracy, generate-drafts)."""
    path = resolve_model_path(cfg.student.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot load the student's tokenizer from {path!r}: {exc}") from exc
    try:
        return tokenizer, GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's eos alone
        return tokenizer, None


def load_data(
    cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, generation_eos: GenerationEos = None
) -> Data:
    """The task and its examples, rendered the way the run will render them: the first prompt
    is logged as text and ids, and a decode round trip of a few prompts and answers warns when
    the tokenizer loses characters (a verifier reads decoded text).

    Args:
        generation_eos: the student's `generation_config.eos_token_id` (an id, a list, None).
    """
    task = task_from_config(cfg.task)
    fmt = prompt_format(
        tokenizer, cfg.task.chat_template, cfg.task.system_prompt, cfg.task.chat_template_kwargs
    )
    codec = PromptCodec(tokenizer, fmt, stop_ids(tokenizer, generation_eos, fmt))
    data = Data(
        task=task,
        train=list(task.train_examples()),
        eval=list(task.eval_examples())[: cfg.task.eval_size],
        codec=codec,
        max_new_tokens=cfg.rollout.max_new_tokens or task.max_new_tokens,
    )
    first = data.train[0]
    log.info(
        "prompts %s the chat template; the first, as the model sees it (%d ids): %r",
        "through" if fmt.chat_template else "without", len(codec.encode([first])[0]),
        codec.render(first),
    )  # fmt: skip
    log.info("responses end at ids %s; budget %d new tokens", list(codec.eos_ids),
             data.max_new_tokens)  # fmt: skip
    warn_round_trip(codec, data.train[:3])
    return data


def warn_round_trip(codec: PromptCodec, examples: list[Example]) -> None:
    """Warn, with the example, when decode(encode(text)) does not give back a prompt or an
    answer: a tokenizer whose decoder drops spaces makes every verifier read mangled text."""
    rendered = [codec.render(ex) for ex in examples]
    checks = [("prompt", round_trip_losses(codec.tokenizer, rendered, special=True)),
              ("answer", round_trip_losses(codec.tokenizer, [ex.answer for ex in examples],
                                           special=False))]  # fmt: skip
    for what, losses in checks:
        if losses:
            loss = losses[0]
            log.warning(
                "decode(encode(text)) loses characters in %d of %d %ss: %r came back as %r "
                "(first difference at character %d). Verifiers read decoded text, so they may "
                "never match; check the tokenizer's decoder (e.g. a ByteLevel decoder over a "
                "vocabulary without byte-level spaces)",
                len(losses), len(examples), what, loss.text, loss.decoded, loss.first_difference,
            )  # fmt: skip


def drafts_source(cfg: RunConfig, teacher: Teacher, data: Data) -> Drafts:
    """Guidance drafts from the drafts file (read now, so a bad file fails before step 0) or
    from the teacher."""
    path = cfg.guidance.drafts_file
    table = load_drafts(path) if cfg.guidance.source == "file" and path else None
    request = DraftRequest(data.max_new_tokens, data.codec.eos_ids, cfg.guidance.temperature,
                           teacher.info.limits.max_request_tokens)  # fmt: skip
    return Drafts(cfg.guidance, teacher.client, table, cfg.train.seed, request)


def make_optimizer(model: PreTrainedModel, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )


def start_status(
    cfg: RunConfig, run_dir: Path, serve: bool = True
) -> tuple[TrainerStatus, StatusServer | None]:
    """The run's live status, served on `train.status_port` when one is set and `serve` (rank 0
    alone serves across processes)."""
    status = TrainerStatus(run_name=cfg.name, run_dir=str(run_dir), total_steps=cfg.train.steps)
    if cfg.train.status_port is None or not serve:
        return status, None
    server = StatusServer(status, host=cfg.train.status_host, port=cfg.train.status_port)
    server.start()
    log.info("status: http://127.0.0.1:%d/v1/status", server.port)
    return status, server
