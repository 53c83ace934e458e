"""Shared fixtures.

Tests are grouped by kind: `unit/` (functions and classes in-process, real tiny models, no
sockets), `integration/` (the real gRPC/HTTP servers on loopback, the real client, trainer
subprocesses), `benchmarks/` (each benchmark script end to end on its smallest setting),
`deploy/` (Dockerfile, compose, Helm and manifests, validated statically), `static/` (ruff, mypy,
packaging).

Tiny random-weight checkpoints of real architectures are built once per session: ordinary
`save_pretrained` folders (model + byte-level BPE tokenizer), loaded by the same
`from_pretrained` path as a real teacher. All three share one tokenizer (same fingerprint).
A teacher server on loopback serving the tiny Llama, a client to it, and an independent float32
reference computed straight from `transformers` serve the teacher tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tropd.teacher.client import TeacherClient
from tropd.teacher.config import ServerConfig
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.tiny_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama layout (GQA, untied head), output layer rows == tokenizer size (438)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 layout (GQA, qkv bias); output layer padded to 448 rows > tokenizer size (438)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny_qwen"), "qwen2", seed=1, vocab_multiple=64
    )


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 layout (learned positions, head tied to the embedding)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2", seed=2)


def server_config(model_dir: Path, **overrides: object) -> ServerConfig:
    """Loopback, free ports, small batches so that tests exercise the batcher."""
    values: dict[str, object] = {
        "model": str(model_dir),
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,
        "max_batch_tokens": 512,
        "max_delay_ms": 5.0,
        "max_top_k": 32,
        "max_candidates": 16,
        "max_request_tokens": 4096,
        "max_new_tokens": 64,
        "max_queue_tokens": 65536,
        "drain_grace_s": 10.0,
    }
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture(scope="session")
def make_config():
    """`server_config` as a fixture, for test modules that build their own servers."""
    return server_config


@pytest.fixture(scope="module")
def llama_server(tiny_llama_dir: Path) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(server_config(tiny_llama_dir))
    yield handle
    handle.stop(grace_s=5.0)


@pytest.fixture()
def client(llama_server: ServerHandle) -> Iterator[TeacherClient]:
    with TeacherClient(llama_server.target, timeout=60, max_retries=2) as c:
        yield c


@dataclass
class Reference:
    """Full-softmax float32 log-probs of a model, computed the plain way (no chunking)."""

    model: torch.nn.Module

    @torch.inference_mode()
    def logprobs_T_V(self, ids: np.ndarray) -> np.ndarray:
        """Row p = log-softmax over the vocabulary of the next token after ids[: p + 1]."""
        logits = self.model(torch.as_tensor(np.asarray(ids, np.int64))[None]).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).numpy()

    def span(self, ids: np.ndarray, start: int, end: int) -> np.ndarray:
        """Rows scoring ids[start:end]: [end - start, V]."""
        return self.logprobs_T_V(ids)[start - 1 : end - 1]


@pytest.fixture(scope="module")
def llama_reference(tiny_llama_dir: Path) -> Reference:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return Reference(model)
