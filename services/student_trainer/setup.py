"""Everything a run needs before step 0, and every refusal that belongs before step 0.

Small constructors the loop calls in order: `load_student`, `load_data` (the task, the prompt
format, and a decode round trip that warns when text does not survive the tokenizer),
`connect_teacher` (which checks that student and teacher can work together: same tokenizer,
fingerprint and vocabulary size, a teacher that offers what the loss needs, and limits that
fit the recipe's lengths), `drafts_source`, `make_optimizer`, `start_status`. Each refusal is
a SetupError that says which side differs and how to fix it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tropd.output_head import OutputHead
from tropd.teacher.client import (
    OutageObserver,
    TeacherClient,
    TeacherClientError,
    TeacherInfo,
    TeacherRpcError,
    tls_credentials,
)
from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.config import OptimConfig, RunConfig, TaskConfig, TeacherConfig
from tropd.trainer.distributed import Ranks
from tropd.trainer.errors import SetupError
from tropd.trainer.guidance import DraftRequest, Drafts, load_drafts
from tropd.trainer.losses import needs_student_topk, needs_topk, unmet_teacher_needs
from tropd.trainer.precision import DTYPES, Precision
from tropd.trainer.prompts import PromptCodec, prompt_format, round_trip_losses, stop_ids
from tropd.trainer.replicas import check_replicas, probe_replica, replica_addresses
from tropd.trainer.rollout_engines import GenerateEngine, RolloutEngine, make_engine
from tropd.trainer.status_server import StatusServer, TrainerStatus
from tropd.trainer.tasks import TaskError, load_task
from tropd.trainer.tasks.base import Example, Task
from tropd.trainer.world import builtin_world_dir

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
class Teacher:
    """A connected, checked teacher: the client and what the teacher said of itself.

    With several teachers (`teachers:` in the config) this is the default one (guidance drafts
    come from it), and `routes` holds every teacher by name, `route_field` the example field
    that picks one (`routing.route`)."""

    client: TeacherClient
    info: TeacherInfo
    in_flight: int = 1  # Score requests a step sends at once
    routes: Mapping[str, Teacher] = field(default_factory=dict)
    route_field: str | None = None

    def clients(self) -> list[TeacherClient]:
        return [t.client for t in self.routes.values()] or [self.client]

    def ride_outages(self, seconds: float, observer: OutageObserver) -> None:
        for client in self.clients():
            client.ride_outages(seconds, observer)

    def close(self) -> None:
        for client in self.clients():
            client.close()


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


def wait_for_teacher(client: TeacherClient, seconds: float) -> TeacherInfo:
    """The teacher's info once it answers; SetupError after `seconds` of UNAVAILABLE."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.info(timeout=min(10.0, max(deadline - time.monotonic(), 1.0)))
        except TeacherRpcError as exc:
            if (
                exc.code != grpc.StatusCode.UNAVAILABLE
                and exc.code != grpc.StatusCode.DEADLINE_EXCEEDED
            ):
                raise SetupError(f"teacher at {client.target} refused GetModelInfo: {exc}") from exc
            if time.monotonic() >= deadline:
                raise SetupError(
                    f"teacher at {client.target} not ready after {seconds:.0f}s ({exc.details}); "
                    "is `tropd-teacher serve` running there?"
                ) from exc
            time.sleep(1.0)


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


def check_teacher(
    cfg: RunConfig, info: TeacherInfo, tokenizer: PreTrainedTokenizerBase, vocab_rows: int
) -> None:
    """Refuse a teacher whose tokenizer or capabilities do not fit this student and loss."""
    mine = fingerprint_of(tokenizer)
    theirs = info.fingerprint
    if mine.sha256 != theirs.sha256:
        raise SetupError(
            "tokenizer mismatch: the student's tokenizer is "
            f"{mine.short()} but the teacher's is {theirs.short()}; "
            "student and teacher must share one tokenizer (token ids travel on the wire)"
        )
    log.info("tokenizer fingerprint ok (%s)", mine.short())
    if info.vocab_size != vocab_rows:
        raise SetupError(
            f"vocabulary size mismatch: the student's output layer has {vocab_rows} rows, "
            f"the teacher's has {info.vocab_size}"
        )
    unmet = unmet_teacher_needs(
        cfg.loss, has_topk=info.capabilities.top_k, has_entropy=info.capabilities.entropy,
        has_candidates=info.capabilities.candidates,
    )  # fmt: skip
    if unmet is not None:
        raise SetupError(f"the {info.backend!r} teacher backend cannot serve this run: {unmet}")
    if needs_topk(cfg.loss) and min(cfg.loss.topk, info.vocab_size) > info.limits.max_top_k:
        raise SetupError(
            f"loss.topk={cfg.loss.topk} is above the teacher's max top-k {info.limits.max_top_k}"
        )
    if needs_student_topk(cfg.loss) and cfg.loss.student_topk > info.limits.max_candidates:
        raise SetupError(
            f"loss.student_topk={cfg.loss.student_topk} is above the teacher's max candidates "
            f"{info.limits.max_candidates}"
        )
    drafts_from_teacher = cfg.guidance.source == "teacher" and (
        cfg.guidance.fraction > 0 or cfg.loss.method == "sft"
    )
    if drafts_from_teacher and not info.capabilities.generate:
        raise SetupError(
            f"the {info.backend!r} teacher backend cannot generate, but guidance.fraction="
            f"{cfg.guidance.fraction} / loss.method={cfg.loss.method!r} need teacher drafts; "
            "write them with a generating teacher (`tropd-train generate-drafts`) and set "
            "guidance.source=file, or turn guidance off"
        )


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


def longest_prompt(codec: PromptCodec, examples: list[Example], probe: int = 16) -> int:
    """Ids of the longest prompt among the `probe` examples with the most text (encoding a
    whole large data set at start-up would take minutes; token counts follow text length)."""

    def chars(ex: Example) -> int:
        turns = ex.messages or ({"content": ex.prompt},)
        return sum(len(t["content"]) for t in turns) + len(ex.system or "")

    longest = sorted(examples, key=chars, reverse=True)[:probe]
    return max((len(ids) for ids in codec.encode(longest)), default=0)


def check_lengths(cfg: RunConfig, info: TeacherInfo, data: Data) -> None:
    """Refuse a recipe whose lengths the teacher would reject after step 0: every rollout is
    scored as prompt + up to `max_new_tokens` ids, and guidance drafts ask Generate for
    `max_new_tokens` new ids."""
    limits, budget = info.limits, data.max_new_tokens
    prompt = longest_prompt(data.codec, data.train + data.eval)
    longest = prompt + budget
    fix = "or lower rollout.max_new_tokens"
    if longest > limits.max_sequence_length:
        raise SetupError(
            f"a rollout can reach {longest} tokens (longest prompt {prompt} + rollout budget "
            f"{budget}), above the teacher's max_sequence_length {limits.max_sequence_length}; "
            "serve a teacher that accepts longer sequences (`tropd-teacher serve "
            "--max-sequence-length`, up to its model's own limit) " + fix
        )
    if longest > limits.max_request_tokens:
        raise SetupError(
            f"a rollout can reach {longest} tokens, above the teacher's max_request_tokens "
            f"{limits.max_request_tokens}; raise it (`tropd-teacher serve --max-request-tokens "
            f"{longest}`) " + fix
        )
    if needs_student_topk(cfg.loss) and cfg.loss.student_topk > info.limits.max_candidates:
        raise SetupError(
            f"loss.student_topk={cfg.loss.student_topk} is above the teacher's max candidates "
            f"{info.limits.max_candidates}"
        )
    drafts_from_teacher = cfg.guidance.source == "teacher" and (
        cfg.guidance.fraction > 0 or cfg.loss.method == "sft"
    )
    if drafts_from_teacher and budget > limits.max_new_tokens:
        raise SetupError(
            f"guidance drafts ask the teacher for up to {budget} new tokens (the rollout "
            f"budget), above its Generate cap max_new_tokens {limits.max_new_tokens}; raise it "
            f"(`tropd-teacher serve --max-new-tokens {budget}`, TEACHER_MAX_NEW_TOKENS) " + fix
        )


def connect_teacher(
    cfg: RunConfig, student: Student, data: Data, t: TeacherConfig | None = None
) -> Teacher:
    """Wait for the teacher (`t`, default `cfg.teacher`), then refuse it unless it fits this
    student, loss and recipe's lengths, and its replicas agree (SetupError)."""
    t = cfg.teacher if t is None else t
    token = t.token or os.environ.get("TEACHER_TOKEN")
    try:
        credentials = tls_credentials(t.tls_ca_file, t.tls_cert_file, t.tls_key_file)
    except ValueError as exc:
        raise SetupError(f"teacher TLS settings: {exc}") from exc
    client = TeacherClient(
        t.target, token=token, timeout=t.timeout_s, max_retries=t.max_retries,
        credentials=credentials,
    )  # fmt: skip
    try:
        try:
            replicas = replica_addresses(t.target)
        except ValueError as exc:
            raise SetupError(f"teacher.target: {exc}") from exc
        info = wait_for_teacher(client, t.wait_ready_s)
        check_teacher(cfg, info, student.tokenizer, student.vocab_rows)
        check_lengths(cfg, info, data)
        if len(replicas) > 1:
            check_replica_set(t, replicas, token, credentials, data)
    except SetupError:
        client.close()
        raise
    in_flight = t.max_in_flight or len(replicas)
    log.info("teacher %s: %d replica(s) %s, %d Score request(s) in flight per step",
             t.target, len(replicas), ", ".join(replicas), in_flight)  # fmt: skip
    return Teacher(client, info, in_flight)


def check_replica_set(
    t: TeacherConfig,
    replicas: list[str],
    token: str | None,
    credentials: grpc.ChannelCredentials | None,
    data: Data,
) -> None:
    """Ask each replica behind `t.target` for its info and its scores of one probe batch (the
    first training prompts); refuse replicas that differ, log the spread when they agree."""
    probe = [np.asarray(ids, np.int32) for ids in data.codec.encode(data.train[:2]) if len(ids) > 1]
    options: list[tuple[str, Any]] = []
    if credentials is not None and t.target.startswith("dns:"):
        # A replica is dialled by address, but its certificate names the Service.
        host = t.target.rpartition("/")[2].rpartition(":")[0]
        options.append(("grpc.ssl_target_name_override", host))
    answers = []
    for address in replicas:
        with TeacherClient(address, token=token, timeout=t.timeout_s, max_retries=t.max_retries,
                           credentials=credentials, channel_options=options) as client:  # fmt: skip
            wait_for_teacher(client, t.wait_ready_s)
            try:
                answers.append(probe_replica(address, client, probe))
            except TeacherClientError as exc:
                raise SetupError(f"teacher replica {address} failed the probe: {exc}") from exc
    spread = check_replicas(answers, t.replica_tolerance)
    log.info("teacher replicas agree: %d replicas (%s), probe of %d tokens, largest |log-prob "
             "difference| %.3g nats (teacher.replica_tolerance %g)", len(replicas),
             ", ".join(replicas), sum(int(p.size) - 1 for p in probe), spread,
             t.replica_tolerance)  # fmt: skip


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
