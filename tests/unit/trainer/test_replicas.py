"""Several teacher replicas, trainer side: which addresses a target names, and how a step's
rollouts split into Score requests that can run at once."""

from __future__ import annotations

import numpy as np
import pytest

from tropd.trainer.batch import TrainSequence
from tropd.trainer.grades import split
from tropd.trainer.replicas import replica_addresses


def seq(n: int) -> TrainSequence:
    return TrainSequence(0, 1, np.zeros(n, np.int64), 0, np.zeros(n - 1, np.float32))


def test_targets_name_their_replicas() -> None:
    assert replica_addresses("teacher:50051") == ["teacher:50051"]
    listed = "ipv4:127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5001"
    assert replica_addresses(listed) == ["127.0.0.1:5001", "127.0.0.1:5002"]
    assert replica_addresses("ipv6:[::1]:5001") == ["[::1]:5001"]
    assert "127.0.0.1:5003" in replica_addresses("dns:///localhost:5003")
    assert "127.0.0.1:5003" in replica_addresses("dns://8.8.8.8/localhost:5003")
    with pytest.raises(ValueError, match="HOST:PORT"):
        replica_addresses("ipv4:127.0.0.1")
    with pytest.raises(ValueError, match="cannot resolve"):
        replica_addresses("dns:///no-such-host.invalid:1")


def test_split_keeps_order_and_limits_and_makes_room_for_concurrency() -> None:
    sequences = [seq(n) for n in (10, 12, 8, 30, 9, 11, 10, 10)]  # 100 tokens
    one = split(sequences, max_request_tokens=1000, in_flight=1)
    assert [len(c) for c in one] == [8]
    four = split(sequences, max_request_tokens=1000, in_flight=4)
    assert 4 <= len(four) <= 5
    assert [q for c in four for q in c] == sequences  # consecutive, in order, all
    assert all(sum(q.ids.size for q in c) <= 25 or len(c) == 1 for c in four)
    tight = split(sequences, max_request_tokens=20, in_flight=2)  # the limit wins
    assert all(sum(q.ids.size for q in c) <= 20 or len(c) == 1 for c in tight)
    assert [q for c in tight for q in c] == sequences


def test_teachers_config_needs_a_routing_field_and_a_known_default() -> None:
    from tropd.errors import ConfigError
    from tropd.trainer.config import load_config

    two = ["teachers.math.target=a:1", "teachers.code.target=b:1", "routing.field=domain"]
    cfg = load_config(None, [*two, "routing.default=math"])
    assert sorted(cfg.teachers) == ["code", "math"] and cfg.routing.field == "domain"
    assert load_config(None, []).teachers == {}  # the single-teacher config is unchanged
    for bad, says in [
        (two[:2], "routing.field"),
        ([*two, "routing.default=law"], "not one of the teachers"),
        (["routing.field=domain"], "routing needs teachers"),
        (["teachers.Math.target=a:1", "routing.field=domain"], "must match"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(None, bad)
