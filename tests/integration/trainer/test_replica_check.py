"""The start-up consistency check over real replicas on loopback (in this process): replicas of
one model agree and report their spread; two different tiny models with the same tokenizer are
refused with the replicas named and the numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tropd.teacher.client import TeacherClient
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.tiny_models import build_tiny_model
from tropd.trainer.errors import SetupError
from tropd.trainer.replicas import ReplicaAnswer, check_replicas, probe_replica

PROBE = [np.array([1, 7, 12, 30, 41, 5, 9, 77, 3], np.int32), np.array([1, 100, 200, 8], np.int32)]


def answers(handles: list[ServerHandle]) -> list[ReplicaAnswer]:
    out = []
    for handle in handles:
        with TeacherClient(handle.target, timeout=30) as client:
            out.append(probe_replica(handle.target, client, PROBE))
    return out


@pytest.fixture()
def servers(tiny_llama_dir: Path, make_config, tmp_path: Path) -> Iterator[list[ServerHandle]]:
    other = build_tiny_model(tmp_path / "other_llama", "llama", seed=7)  # same tokenizer
    handles = [start_server(make_config(d)) for d in (tiny_llama_dir, tiny_llama_dir, other)]
    yield handles
    for handle in handles:
        handle.stop(grace_s=2.0)


def test_replicas_of_one_model_agree_and_different_weights_are_refused(servers) -> None:
    same, also_same, other = servers
    agreeing = answers([same, also_same])
    spread = check_replicas(agreeing, tolerance=1e-4)
    print(f"\nspread between replicas of one model: {spread:.3g} nats")
    assert spread <= 1e-5

    differing = answers([same, other])
    assert differing[0].info.fingerprint == differing[1].info.fingerprint  # same tokenizer
    with pytest.raises(SetupError, match="teacher replicas disagree") as exc:
        check_replicas(differing, tolerance=0.25)
    message = str(exc.value)
    print(message)
    assert same.target in message and other.target in message
    assert "log-prob" in message and "above teacher.replica_tolerance 0.25" in message
    pairs = zip(differing[0].logprobs, differing[1].logprobs, strict=True)
    gap = max(float(np.abs(a - b).max()) for a, b in pairs)
    assert gap > 0.25 and f"{gap:.3g}" in message


def test_a_replica_with_another_tokenizer_is_refused_naming_both(
    tiny_llama_dir: Path, tiny_chat_qwen3_dir: Path, make_config
) -> None:
    handles = [start_server(make_config(d)) for d in (tiny_llama_dir, tiny_chat_qwen3_dir)]
    try:
        found = answers(handles)
    finally:
        for handle in handles:
            handle.stop(grace_s=2.0)
    with pytest.raises(SetupError, match="teacher replicas differ") as exc:
        check_replicas(found, tolerance=0.25)
    for answer in found:
        assert answer.address in str(exc.value)
        assert answer.info.fingerprint.sha256[:12] in str(exc.value)
