"""The run's link to its teacher, made and checked before step 0.

`connect_teacher` dials the teacher (`teacher.target`, TLS and token as configured), waits for
it to answer (`wait_for_teacher`), then refuses it unless it can work with this student and
recipe: the same tokenizer fingerprint and vocabulary size, what the loss needs (`check_teacher`),
limits that fit the recipe's lengths (`check_lengths`), and, behind a target that resolves to
several replicas, replicas that agree on a probe batch (`check_replica_set`). Each refusal is a
SetupError that says which side differs and how to fix it. Knows the student and data only as
`setup.Student` and `setup.Data`; what the teacher computes is `tropd.teacher.client`'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from transformers import PreTrainedTokenizerBase

from tropd.teacher.client import (
    OutageObserver,
    TeacherClient,
    TeacherClientError,
    TeacherInfo,
    TeacherRpcError,
    tls_credentials,
)
from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.config import RunConfig, TeacherConfig
from tropd.trainer.errors import SetupError
from tropd.trainer.losses import needs_student_topk, needs_topk, unmet_teacher_needs
from tropd.trainer.prompts import PromptCodec
from tropd.trainer.replicas import check_replicas, probe_replica, replica_addresses
from tropd.trainer.setup import Data, Student
from tropd.trainer.tasks.base import Example

log = logging.getLogger(__name__)


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
    if _drafts_from_teacher(cfg) and not info.capabilities.generate:
        raise SetupError(
            f"the {info.backend!r} teacher backend cannot generate, but guidance.fraction="
            f"{cfg.guidance.fraction} / loss.method={cfg.loss.method!r} need teacher drafts; "
            "write them with a generating teacher (`tropd-train generate-drafts`) and set "
            "guidance.source=file, or turn guidance off"
        )


def _drafts_from_teacher(cfg: RunConfig) -> bool:
    """Whether the run asks the teacher's Generate for drafts (guidance or the sft baseline)."""
    return cfg.guidance.source == "teacher" and (
        cfg.guidance.fraction > 0 or cfg.loss.method == "sft"
    )


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
    if _drafts_from_teacher(cfg) and budget > limits.max_new_tokens:
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
