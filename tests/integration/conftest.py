"""Integration tests: the built-in teacher as a fixture, and the shared process helpers
(processes.py) made importable.

The suite runs with --import-mode=importlib, which does not put test folders on sys.path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tropd.teacher.config import ServerConfig
from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.world import builtin_world_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def teacher() -> Iterator[ServerHandle]:
    """The built-in world's teacher served in-process on loopback, one per test module (a module
    that needs another teacher defines its own `teacher`)."""
    torch.set_num_threads(1)
    config = ServerConfig(model=str(builtin_world_dir() / "teacher"), host="127.0.0.1", port=0,
                          http_port=0, max_delay_ms=2.0)  # fmt: skip
    handle = start_server(config)
    yield handle
    handle.stop(grace_s=5.0)
