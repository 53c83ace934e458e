"""Shared fixtures: tiny random-weight checkpoints of real architectures, built once per session.

They are ordinary `save_pretrained` folders (model + byte-level BPE tokenizer), loaded by the
same `from_pretrained` path as a real teacher. All three share one tokenizer (same fingerprint).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
