"""The replicas behind a teacher target: which addresses a gRPC target names.

A target is one address (`host:port`), an address list (`ipv4:a:p,b:p`, `ipv6:[..]:p,..`), or a
DNS name (`dns:///name:port`, a Kubernetes headless Service: one A record per ready pod). gRPC
resolves and balances them itself (`TeacherClient`); the trainer resolves them once more here,
with the stdlib, to size how many Score requests a step sends at once and to check at start-up
that every replica is the same teacher (`check_replicas`): same tokenizer and model, and the
same log-probs of one probe batch within `teacher.replica_tolerance`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tropd.teacher.client import TeacherClient, TeacherInfo
from tropd.trainer.errors import SetupError


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def replica_addresses(target: str) -> list[str]:
    """Every `host:port` a target names, in order, duplicates dropped.

    Args:
        target: `host:port`, `dns:///host:port` (resolved now; `dns://authority/host:port` too),
            or `ipv4:`/`ipv6:` followed by a comma-separated address list.
    Returns:
        The addresses (IPv6 hosts in brackets); a plain `host:port` comes back as given.
    Raises:
        ValueError: a malformed target, or a DNS name that does not resolve (the message says so).
    """
    if target.startswith(("ipv4:", "ipv6:")):
        listed = [a.strip() for a in target.split(":", 1)[1].split(",") if a.strip()]
        for address in listed:
            _split_host_port(address)
        return list(dict.fromkeys(listed))
    if target.startswith("dns:"):
        name = target.removeprefix("dns:").lstrip("/")
        name = name.split("/", 1)[1] if target.startswith("dns://") and "/" in name else name
        host, port = _split_host_port(name)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {host!r} of {target!r}: {exc.strerror}") from None
        found = [
            f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}"
            for info in infos
        ]
        return list(dict.fromkeys(found))
    _split_host_port(target)
    return [target]


@dataclass(frozen=True)
class ReplicaAnswer:
    """What one replica said of itself and how it scored the probe."""

    address: str
    info: TeacherInfo
    logprobs: list[np.ndarray]  # per probe sequence, rows scoring ids[1:]


def probe_replica(
    address: str, client: TeacherClient, probe: Sequence[np.ndarray]
) -> ReplicaAnswer:
    """One replica's info and its log-probs of every probe sequence (from position 1)."""
    info = client.info()
    scored = client.score(list(probe), starts=1)
    return ReplicaAnswer(address, info, [np.asarray(s.logprobs, np.float64) for s in scored])


def check_replicas(answers: Sequence[ReplicaAnswer], tolerance: float) -> float:
    """Refuse replicas that would grade the same rollout differently.

    Args:
        answers: each replica's info and probe log-probs (`probe_replica`), the same probe.
        tolerance: the largest |difference| of a probe log-prob between two replicas, nats.
    Returns:
        The spread: the largest |difference| of any probe log-prob from the first replica's.
    Raises:
        SetupError: tokenizer fingerprints, models or output-layer sizes differ, or the spread
            is above `tolerance`; the message names the replicas and the numbers.
    """
    first = answers[0]
    spread = 0.0
    for other in answers[1:]:
        a, b = first.info, other.info
        if a.fingerprint.sha256 != b.fingerprint.sha256 or a.vocab_size != b.vocab_size:
            raise SetupError(
                f"teacher replicas differ: {first.address} serves {a.model_id!r} with tokenizer "
                f"{a.fingerprint.short()} and {a.vocab_size} output rows, {other.address} "
                f"serves {b.model_id!r} with tokenizer {b.fingerprint.short()} and "
                f"{b.vocab_size} output rows; every replica behind teacher.target must serve "
                "the same model"
            )
        for i, (x, y) in enumerate(zip(first.logprobs, other.logprobs, strict=True)):
            gap = np.abs(x - y)
            worst = int(np.argmax(gap)) if gap.size else 0
            if gap.size and gap[worst] > tolerance:
                raise SetupError(
                    f"teacher replicas disagree: probe sequence {i}, token {worst + 1}: "
                    f"{first.address} ({a.model_id!r}) gives log-prob {x[worst]:.6f}, "
                    f"{other.address} ({b.model_id!r}) {y[worst]:.6f}, |difference| "
                    f"{gap[worst]:.3g} nats above teacher.replica_tolerance {tolerance:g} "
                    f"(mean |difference| over the probe {float(gap.mean()):.3g}); the replicas "
                    "serve different weights or numerics"
                )
            spread = max(spread, float(gap.max()) if gap.size else 0.0)
    return spread
