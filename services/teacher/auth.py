"""Job identity: the tokens file, bearer-token authentication and per-job rights.

Knows nothing about gRPC or HTTP: both sides hand `Authenticator.authenticate` the raw value of
their `authorization` header/metadata and get a `Job` back, or a typed error (`Unauthenticated`,
`PermissionDenied` from `tropd.teacher.errors`) that each side maps to its own status code:

    job = state.auth.authenticate(request.headers.get("authorization"))   # HTTP side
    state.auth.authorize(job, "generate")                                  # PermissionDenied

The tokens file (`--tokens-file`, TEACHER_TOKENS_FILE; e.g. a mounted Kubernetes Secret):

    jobs:
      - name: student-a              # metrics label and log name; [A-Za-z0-9._-], <= 63 chars
        token: "at-least-16-characters"
        weight: 2                    # share of the teacher under contention (default 1)
        allow: [score, generate]     # default: both
        quotas:                      # each optional; default: no per-job limit
          max_queued_tokens: 262144  # tokens waiting in this job's queue
          max_in_flight: 16          # this job's requests queued or computing at once
          max_request_tokens: 65536  # tokens in one request

Modes: no tokens file -> every caller, with or without a token, is the job "anonymous" (weight
1, no quotas); the server logs a warning. A tokens file -> a known bearer token is required,
unless `allow_anonymous`, in which case a call WITHOUT a token runs as "anonymous" (a wrong
token is still refused).

Tokens are compared in constant time (SHA-256 digests, `hmac.compare_digest` against every
entry) and never appear in messages, logs or reprs. `reload` swaps the table atomically; work
already queued keeps running under the job it was admitted as.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tropd.teacher.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

Method = Literal["score", "generate"]
METHODS: frozenset[str] = frozenset({"score", "generate"})
ANONYMOUS_NAME = "anonymous"
MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_JOB_KEYS = {"name", "token", "weight", "allow", "quotas"}
_QUOTA_KEYS = ("max_queued_tokens", "max_in_flight", "max_request_tokens")


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file, the line and the key."""


@dataclass(frozen=True)
class Quotas:
    """Per-job limits; None = no per-job limit (the server-wide limits still apply)."""

    max_queued_tokens: int | None = None
    max_in_flight: int | None = None
    max_request_tokens: int | None = None


@dataclass(frozen=True)
class Job:
    """Who a request runs as. Holds no secret, so it may be logged and shown on /v1/jobs."""

    name: str
    weight: float = 1.0
    allow: frozenset[str] = METHODS
    quotas: Quotas = field(default_factory=Quotas)


ANONYMOUS = Job(ANONYMOUS_NAME)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class JobTable:
    """The parsed tokens file: jobs in file order and their token digests."""

    jobs: tuple[Job, ...]
    digests: tuple[bytes, ...]

    def find(self, token: str) -> Job | None:
        presented = _digest(token)
        found: Job | None = None
        # No early exit: the time taken does not depend on which entry (if any) matched.
        for digest, job in zip(self.digests, self.jobs, strict=True):
            if hmac.compare_digest(digest, presented):
                found = job
        return found


# --- parsing -----------------------------------------------------------------------------------


class _Where:
    """Formats "FILE, line N: KEY: problem" for one node of the YAML tree."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node | None, key: str, problem: str) -> TokensFileError:
        line = f", line {node.start_mark.line + 1}" if node is not None else ""
        return TokensFileError(f"tokens file {self.path}{line}: {key}: {problem}")


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _positive_int(where: _Where, node: yaml.Node, key: str) -> int:
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(node, key, f"must be a whole number >= 1 (got {value!r})")
    return value


def _parse_quotas(where: _Where, node: yaml.Node, key: str) -> Quotas:
    if not isinstance(node, yaml.MappingNode):
        raise where.error(node, key, "must be a mapping of " + ", ".join(_QUOTA_KEYS))
    values: dict[str, int] = {}
    for key_node, value_node in node.value:
        name = str(_scalar(key_node))
        if name not in _QUOTA_KEYS:
            raise where.error(
                key_node, f"{key}.{name}", "unknown quota; known: " + ", ".join(_QUOTA_KEYS)
            )
        values[name] = _positive_int(where, value_node, f"{key}.{name}")
    return Quotas(**values)


def _parse_allow(where: _Where, node: yaml.Node, key: str) -> frozenset[str]:
    value = _scalar(node)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(node, key, "must be a list of method names, e.g. [score, generate]")
    unknown = sorted(set(value) - METHODS)
    if unknown:
        raise where.error(node, key, f"unknown methods {unknown}; known: score, generate")
    return frozenset(value)


def _parse_job(where: _Where, node: yaml.Node, index: int) -> tuple[Job, str, dict[str, Any]]:
    key = f"jobs[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise where.error(node, key, "must be a mapping with name, token and weight")
    nodes: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        name = str(_scalar(key_node))
        if name not in _JOB_KEYS:
            raise where.error(
                key_node, f"{key}.{name}", "unknown key; known: " + ", ".join(sorted(_JOB_KEYS))
            )
        nodes[name] = value_node
    for required in ("name", "token"):
        if required not in nodes:
            raise where.error(node, f"{key}.{required}", "required")
    name = _scalar(nodes["name"])
    if not isinstance(name, str) or not _NAME.match(name) or name == ANONYMOUS_NAME:
        raise where.error(
            nodes["name"], f"{key}.name",
            f"must be 1-63 characters of A-Z a-z 0-9 . _ -, not {ANONYMOUS_NAME!r} (got {name!r})",
        )  # fmt: skip
    token = _scalar(nodes["token"])
    # The token's value is never put in a message: it is a secret even when malformed.
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS or token != token.strip():
        raise where.error(
            nodes["token"], f"{key}.token",
            f"must be a string of at least {MIN_TOKEN_CHARS} characters without surrounding "
            "whitespace",
        )  # fmt: skip
    weight: Any = 1.0
    if "weight" in nodes:
        weight = _scalar(nodes["weight"])
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise where.error(nodes["weight"], f"{key}.weight", f"must be > 0 (got {weight!r})")
    allow = _parse_allow(where, nodes["allow"], f"{key}.allow") if "allow" in nodes else METHODS
    quotas = Quotas()
    if "quotas" in nodes:
        quotas = _parse_quotas(where, nodes["quotas"], f"{key}.quotas")
    return Job(name, float(weight), allow, quotas), token, nodes


def parse_tokens_file(text: str, path: str) -> JobTable:
    """Parse and check a tokens file.

    Args:
        text: the file's contents.
        path: its path, for messages.
    Returns:
        The job table.
    Raises:
        TokensFileError: invalid YAML or an invalid entry; names the line and the key, never a
            token's value.
    """
    where = _Where(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise TokensFileError(f"tokens file {path}{line}: not valid YAML: {problem}") from None
    if not isinstance(root, yaml.MappingNode):
        raise where.error(root, "jobs", "the file must be a mapping with a `jobs:` list")
    top = {str(_scalar(k)): (k, v) for k, v in root.value}
    if set(top) - {"jobs"}:
        extra = sorted(set(top) - {"jobs"})[0]
        raise where.error(top[extra][0], extra, "unknown key; the file holds only `jobs:`")
    if "jobs" not in top or not isinstance(top["jobs"][1], yaml.SequenceNode):
        raise where.error(root, "jobs", "required: a list of {name, token, weight, ...}")
    jobs: list[Job] = []
    digests: list[bytes] = []
    names: dict[str, int] = {}
    for index, node in enumerate(top["jobs"][1].value):
        job, token, nodes = _parse_job(where, node, index)
        if job.name in names:
            raise where.error(
                nodes["name"], f"jobs[{index}].name", f"duplicate of jobs[{names[job.name]}]"
            )
        digest = _digest(token)
        if digest in digests:
            raise where.error(
                nodes["token"], f"jobs[{index}].token",
                f"same token as jobs[{digests.index(digest)}]; each job needs its own",
            )  # fmt: skip
        names[job.name] = index
        jobs.append(job)
        digests.append(digest)
    return JobTable(tuple(jobs), tuple(digests))


def load_tokens_file(path: str) -> JobTable:
    """Read and parse `path` (see `parse_tokens_file`); an unreadable file is a TokensFileError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"tokens file {path}: cannot read it ({exc})") from None
    return parse_tokens_file(text, path)


# --- authentication ----------------------------------------------------------------------------


def bearer_token(header_value: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None when there is no header.

    Raises:
        Unauthenticated: a header that is not a bearer token (the value is not echoed).
    """
    if header_value is None or header_value == "":
        return None
    scheme, _, token = header_value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "the authorization header must be 'Bearer <job token>'", reason="malformed_token"
        )
    return token


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes Secret update swaps the link target
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Authenticator:
    """The live job table of one server, and the checks both the gRPC and HTTP sides call."""

    def __init__(self, tokens_file: str | None, allow_anonymous: bool = False) -> None:
        """Args:
        tokens_file: path of the tokens file, or None (everyone is "anonymous").
        allow_anonymous: with a tokens file, let calls without a token run as "anonymous".

        Raises:
            TokensFileError: the file is missing or malformed (the server must not start).
        """
        self.tokens_file = tokens_file
        self.allow_anonymous = allow_anonymous or tokens_file is None
        self._table = JobTable((), ())
        self._stamp: tuple[int, int, int] | None = None
        if tokens_file is not None:
            self._stamp = _file_stamp(tokens_file)
            self._table = load_tokens_file(tokens_file)

    @property
    def enforced(self) -> bool:
        """True when a call without a token is refused."""
        return not self.allow_anonymous

    @property
    def jobs(self) -> tuple[Job, ...]:
        """The configured jobs, plus "anonymous" when anonymous calls are allowed."""
        return self._table.jobs + ((ANONYMOUS,) if self.allow_anonymous else ())

    def authenticate(self, header_value: str | None) -> Job:
        """The job a call runs as.

        Args:
            header_value: the raw `authorization` metadata/header value, or None.
        Returns:
            The job of the token, or ANONYMOUS for a call without a token where allowed.
        Raises:
            Unauthenticated: no token where one is required, a malformed header, or a token
                the tokens file does not hold (e.g. revoked by a reload).
        """
        if self.tokens_file is None:
            return ANONYMOUS  # nothing to check against: a student's token is not an error
        token = bearer_token(header_value)
        if token is None:
            if self.allow_anonymous:
                return ANONYMOUS
            raise Unauthenticated(
                "this teacher requires a job token: send 'authorization: Bearer <token>' "
                "(TEACHER_TOKEN / teacher.token on the trainer)",
                reason="missing_token",
            )
        job = self._table.find(token)
        if job is None:
            raise Unauthenticated(
                "unknown job token (not in the teacher's tokens file, or revoked)",
                reason="unknown_token",
            )
        return job

    def authorize(self, job: Job, method: Method) -> None:
        """Raise PermissionDenied unless `job` may call `method`."""
        if method not in job.allow:
            allowed = ", ".join(sorted(job.allow)) or "nothing"
            raise PermissionDenied(
                f"job {job.name!r} may not call {method} (its tokens-file entry allows: {allowed})"
            )

    def reload(self) -> bool:
        """Re-read the tokens file and swap the table in one step.

        Returns:
            True when a new table was loaded; False without a tokens file.
        Raises:
            TokensFileError: the new file is malformed; the old table stays in force.
        """
        if self.tokens_file is None:
            return False
        stamp = _file_stamp(self.tokens_file)
        table = load_tokens_file(self.tokens_file)
        self._table, self._stamp = table, stamp
        log.info(
            "tokens file %s loaded: %d jobs (%s)",
            self.tokens_file, len(table.jobs), ", ".join(j.name for j in table.jobs),
        )  # fmt: skip
        return True

    def reload_if_changed(self) -> bool:
        """`reload` when the file's mtime, size or inode changed; errors are logged, not raised.

        Returns:
            True when a new table was loaded.
        """
        if self.tokens_file is None or _file_stamp(self.tokens_file) == self._stamp:
            return False
        return self.try_reload()

    def try_reload(self) -> bool:
        """`reload`, logging (without secrets) and keeping the old table when the file is bad."""
        try:
            return self.reload()
        except TokensFileError as exc:
            self._stamp = _file_stamp(self.tokens_file or "")  # do not retry until it changes
            log.error("keeping the previous job tokens: %s", exc)
            return False
