"""Teacher server configuration: one frozen model, filled from TEACHER_* environment then flags.

The environment is read once, by `load_config`, at start-up (never at import). Every field `x`
has the environment variable `TEACHER_X` (e.g. `max_batch_tokens` <- TEACHER_MAX_BATCH_TOKENS,
`port` <- TEACHER_PORT); command-line values override the environment; defaults live here only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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
    host: str = Field("0.0.0.0", description="address both ports bind to")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = any free port)")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP port for /livez /readyz /metrics (0 = any free)"
    )
    max_batch_tokens: int = Field(
        8192, ge=1, description="token budget of one forward pass, padding included"
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
    max_message_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="largest gRPC message sent or received"
    )
    tokens_file: str | None = Field(
        None,
        description="YAML tokens file of the jobs (teacher.auth); none = every caller is "
        '"anonymous"; reloaded on change or SIGHUP',
    )
    allow_anonymous: bool = Field(
        False, description="with a tokens file, serve calls without a token as job anonymous"
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
