"""Shared fixtures.

Tests are grouped by kind: `unit/` (functions and classes in-process, real tiny models, no
sockets), `integration/` (the real gRPC/HTTP servers on loopback, the real client, trainer
subprocesses), `benchmarks/` (each benchmark script end to end on its smallest setting),
`deploy/` (Dockerfile, compose, Helm and manifests, validated statically), `static/` (ruff, mypy,
packaging).

Tiny random-weight checkpoints of real architectures are built once per session: ordinary
`save_pretrained` folders (model + byte-level BPE tokenizer), loaded by the same
`from_pretrained` path as a real teacher. All three share one tokenizer (same fingerprint).
A tiny Qwen3 instruct stand-in adds a ChatML chat template and Qwen's end-of-turn token.
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
from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

from tropd.teacher.client import TeacherClient
from tropd.teacher.config import ServerConfig
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.tiny_models import EOS_ID, build_tiny_model, build_tokenizer

# Qwen's ChatML layout, written here (no download): system/user turns, the generation prompt,
# and Qwen3's `enable_thinking=false` empty think block.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)


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


def build_tiny_chat_qwen3(out: Path, seed: int = 3) -> Path:
    """A random Qwen3 (2 layers, width 32) whose tokenizer has a ChatML template; as in Qwen3
    instruct checkpoints its eos is <|im_end|>, and the generation config lists <|im_end|> and
    the base <eos>. 4,096 positions, so real-length recipes fit (RoPE has no position weights).
    """
    tokenizer = build_tokenizer(96, 4096)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[im_end, EOS_ID],
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_qwen3(tmp_path_factory.mktemp("tiny_chat_qwen3"))


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
