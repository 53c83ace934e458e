"""Teacher backends, chosen by name from an explicit registry (see `load_backend`).

Each entry imports its backend module only when called, so heavy dependencies (torch,
transformers, a TGI client) load only in a server that uses that backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tropd.teacher.backends.base import Backend


def _load_hf(**options: Any) -> Backend:
    from tropd.teacher.backends.hf import HFBackend, HFOptions

    return HFBackend(HFOptions(**options))


def _load_tgi(**options: Any) -> Backend:
    # Needs the `tgi` extra (the text-generation client), never torch or transformers.
    from tropd.teacher.backends.tgi import TGIBackend, TGIOptions

    return TGIBackend(TGIOptions(**options))


BACKENDS: dict[str, Callable[..., Backend]] = {"hf": _load_hf, "tgi": _load_tgi}


def load_backend(name: str, **options: Any) -> Backend:
    """Build the backend registered under `name`.

    Args:
        name: a registry name, e.g. "hf".
        **options: that backend's options (for "hf": `tropd.teacher.backends.hf.HFOptions` fields,
            e.g. model_path, device, dtype, chunk_size, max_sequence_length; for "tgi":
            `tropd.teacher.backends.tgi.TGIOptions`: url, model_path, max_concurrency, timeout_s).
    Returns:
        The loaded backend.
    Raises:
        ValueError: unknown name, or options the backend rejects (pydantic's ValidationError
            is a ValueError and names the field).
    """
    try:
        loader = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}"
        ) from None
    return loader(**options)
