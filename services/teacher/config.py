"""Teacher server configuration: one frozen model, filled from TEACHER_* environment then flags.

The environment is read once, by `load_config`, at start-up (never at import). Every field `x`
has the environment variable `TEACHER_X` (e.g. `max_batch_tokens` <- TEACHER_MAX_BATCH_TOKENS,
`port` <- TEACHER_PORT); command-line values override the environment; defaults live here only.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tropd.errors import ConfigError
from tropd.teacher.backends import BACKENDS

ENV_PREFIX = "TEACHER_"


class ServerConfig(BaseModel):
    """Everything a teacher server needs to start. Sizes are in tokens unless named otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="model directory (save_pretrained folder) or backend model id")
    model_id: str | None = Field(None, description="name reported to clients; default: model")
    backend: str = Field("hf", description="backend registry name")
    device: str = Field("cpu", description='torch device, e.g. "cpu", "cuda", "cuda:1"')
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="compute dtype of the weights: float32, bfloat16, float16 or auto"
    )
    host: str = Field(
        "127.0.0.1",
        description="address both ports bind to (loopback by default; 0.0.0.0 = every "
        "interface, which needs a tokens file or allow_anonymous)",
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = any free port)")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP port for /livez /readyz /metrics (0 = any free)"
    )
    max_batch_tokens: int = Field(
        8192, ge=1, description="token budget of one forward pass, padding included"
    )
    contended_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="token budget of a forward pass while two or more jobs have work waiting "
        "(default: max_batch_tokens); lower it to shorten a light job's wait beside a flood, "
        "at some throughput",
    )
    max_delay_ms: float = Field(
        5.0, ge=0, description="longest wait for more work to fill a batch, in milliseconds"
    )
    max_top_k: int = Field(128, ge=0, description="largest top-k a request may ask for")
    max_candidates: int = Field(256, ge=0, description="most candidate ids per scored position")
    max_request_tokens: int = Field(
        262_144, ge=1, description="most tokens (ids, or prompt + new tokens) in one request"
    )
    max_sequence_length: int | None = Field(
        None, ge=2, description="override (lower) the model's maximum sequence length"
    )
    max_new_tokens: int = Field(1024, ge=1, description="cap on max_new_tokens of a Generate")
    max_queue_tokens: int = Field(
        1_048_576, ge=1, description="tokens waiting in the queue before RESOURCE_EXHAUSTED"
    )
    drain_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight work may take to finish"
    )
    tgi_url: str | None = Field(
        None, description="backend tgi: base URL of the TGI server (model = tokenizer folder)"
    )
    tgi_max_concurrency: int = Field(
        8, ge=1, description="backend tgi: parallel requests to TGI (capped by TGI's own)"
    )
    tgi_token: SecretStr | None = Field(
        None,
        description="backend tgi: bearer token sent to TGI (Authorization header); "
        "prefer TEACHER_TGI_TOKEN over the flag; never printed",
    )
    tgi_timeout_s: float = Field(
        60.0, gt=0, description="backend tgi: HTTP timeout of each request to TGI, in seconds"
    )
    max_message_bytes: int | None = Field(
        None,
        ge=1024,
        description="largest gRPC message received (default: sized from max_request_tokens "
        "and max_candidates, see message_limits)",
    )
    max_http_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest HTTP request body, checked before parsing"
    )
    max_json_depth: int = Field(
        32, ge=2, le=1000, description="deepest nesting of an HTTP JSON body (arrays, objects)"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of `serve` (default: half the CPUs this process may "
        "use, at least 1, so a trainer on the same machine keeps the other half)",
    )
    tokens_file: str | None = Field(
        None,
        description="YAML tokens file of the jobs (teacher.auth); none = every caller is "
        '"anonymous"; reloaded on change or SIGHUP',
    )
    allow_anonymous: bool = Field(
        False,
        description="with a tokens file, serve calls without a token as job anonymous; "
        "without one, allow binding a non-loopback host with no authentication",
    )
    http_plaintext: bool = Field(
        False,
        description="with TLS: keep the HTTP port plaintext (probes) and refuse bearer tokens "
        "there; default: the HTTP port serves TLS with the gRPC certificate",
    )
    metrics_job_label: Literal["name", "hash", "none"] = Field(
        "name",
        description="the job label of per-job /metrics series: the tokens-file name, a short "
        'hash of it, or "none" (per-job series all read job="-")',
    )
    refusal_log_interval_s: float = Field(
        10.0,
        ge=0,
        description="at most one WARNING per refusal reason per this many seconds; the rest "
        "are counted in teacher_refusal_logs_suppressed_total",
    )
    tls_cert_file: str | None = Field(None, description="PEM certificate chain: gRPC over TLS")
    tls_key_file: str | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: str | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend; known: {', '.join(sorted(BACKENDS))}")
        return name

    @model_validator(mode="after")
    def _tgi_needs_url(self) -> ServerConfig:
        if self.backend == "tgi" and not self.tgi_url:
            raise ValueError("backend tgi needs tgi_url (TEACHER_TGI_URL or --tgi-url)")
        return self

    @model_validator(mode="after")
    def _tls_files_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (set both or neither)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _open_host_needs_auth(self) -> ServerConfig:
        if not is_loopback(self.host) and self.tokens_file is None and not self.allow_anonymous:
            raise ValueError(
                f"host {self.host} is reachable from other machines but no tokens_file is "
                "set: anyone could use the teacher. Give a tokens file (--tokens-file), bind "
                "loopback (--host 127.0.0.1), or pass --allow-anonymous to serve everyone"
            )
        return self

    @model_validator(mode="after")
    def _request_fits_queue(self) -> ServerConfig:
        if self.max_request_tokens > self.max_queue_tokens:
            raise ValueError(
                f"max_request_tokens ({self.max_request_tokens}) must not exceed "
                f"max_queue_tokens ({self.max_queue_tokens}): such a request could never queue"
            )
        return self

    def to_json(self) -> str:
        """The resolved configuration as one JSON line (printed at start-up); secrets masked."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves to a reachable interface


@dataclass(frozen=True)
class MessageLimits:
    """gRPC message size limits, in bytes."""

    receive: int
    send: int


# Room for a request's or response's framing besides its arrays: per-item tags, dtype, shape,
# strings (model id, tokenizer hash). Generous: 32 bytes per item (an item holds >= 2 tokens)
# plus a fixed 64 KiB.
_FRAMING_BYTES = 64 * 1024


def message_limits(config: ServerConfig) -> MessageLimits:
    """The gRPC limits implied by the request limits (or `max_message_bytes` when set).

    A Score request holds at most `max_request_tokens` int32 ids plus, per scored position, up
    to `max_candidates` int32 candidate ids; a response holds per position a float32 log-prob,
    `max_top_k` ids and log-probs, `max_candidates` log-probs and three float32 extras.

    Returns:
        Receive: what a largest valid request needs (or `max_message_bytes`); send: what a
        largest valid response needs (never below receive).
    """
    tokens = config.max_request_tokens
    per_item = 16 * tokens  # 32 bytes per item, items of two tokens
    receive = 4 * tokens * (1 + config.max_candidates) + per_item + _FRAMING_BYTES
    per_position = 4 + 8 * config.max_top_k + 4 * config.max_candidates + 12
    send = per_position * tokens + per_item + _FRAMING_BYTES
    if config.max_message_bytes is not None:
        receive = config.max_message_bytes
    return MessageLimits(receive, max(send, receive))


def env_name(field: str) -> str:
    """Environment variable of a config field: "max_batch_tokens" -> TEACHER_MAX_BATCH_TOKENS."""
    return ENV_PREFIX + field.upper()


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in ServerConfig.model_fields:
        raw = environ.get(env_name(field))
        if raw is not None and raw.strip() != "":
            values[field] = raw.strip()
    return values


def _describe(error: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "missing":
            flag = "--" + field.replace("_", "-")
            lines.append(f"{field}: required; set {env_name(field)} or pass {flag}")
            continue
        origin = sources.get(field, "")
        value = f" (got {item['input']!r}{origin})" if item["loc"] else ""
        lines.append(f"{field}: {item['msg']}{value}")
    return "invalid teacher configuration:\n  " + "\n  ".join(lines)


def load_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Resolve the configuration: defaults < TEACHER_* environment < explicit overrides.

    Args:
        overrides: field -> value from the command line (None values are ignored).
        environ: the environment to read (default: `os.environ`), read once here.
    Returns:
        The frozen, validated configuration.
    Raises:
        ConfigError: a missing or invalid value; the message names the field, the value and
            where it came from (environment variable or flag).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = _from_env(env)
    sources = {field: f" from {env_name(field)}" for field in values}
    for field, value in (overrides or {}).items():
        if value is not None:
            values[field] = value
            sources[field] = f" from --{field.replace('_', '-')}"
    try:
        return ServerConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
