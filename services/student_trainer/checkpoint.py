"""Step-numbered training checkpoints: write atomically, find the newest good one, resume exactly.

Layout of `<run_dir>/checkpoints/step-000010/`:
  config.json, model.safetensors, tokenizer*   the student in HF format (`from_pretrained(dir)`)
  optimizer.pt                                 `optimizer.state_dict()`
  rng.pt                                       python, numpy, torch CPU/CUDA, named generators
  scaler.pt                                    float16 runs only: the loss scale's state
  train_state.json                             step, training seconds so far, data position
  train_config.yaml                            the resolved trainer config
  meta.json                                    written last: sizes of every file, weights sha256

A checkpoint is written under `.tmp-step-…` in the same folder, fsynced and renamed, so a crash
leaves either a complete checkpoint or a temp folder that `find_latest_checkpoint` ignores.

Across processes (`train.parallel`) `sharded_checkpoint.py` writes the same layout with the
model and optimizer as shards; `find_latest_checkpoint` and `verify_checkpoint` serve both.
Knows nothing about the training loop: it saves and restores what it is handed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
META_FILE = "meta.json"
SCALER_FILE = "scaler.pt"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_TMP_PREFIX = ".tmp-"
_HASH_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupt, or does not fit the objects it is loaded into."""


@dataclass
class TrainState:
    """What the loop needs to resume besides weights, optimizer and RNGs.

    step: optimizer steps completed. elapsed_s: training wall time so far in seconds, summed
    over resumes. data_state: the sampler's position, any JSON-able dict the loop owns.
    """

    step: int
    data_state: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def step_dir_name(step: int) -> str:
    """Folder name of a step's checkpoint, e.g. 'step-000010'."""
    return f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path | str,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: Mapping[str, Any],
    keep_last: int | None = 3,
    generators: Mapping[str, torch.Generator] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write `<run_dir>/checkpoints/step-NNNNNN/` atomically and prune old checkpoints.

    RNG states are captured here, so call it at a step boundary, after `optimizer.step()`.
    Checkpoints of a later step (left by an abandoned timeline before a resume from an older
    one) are removed so that "latest" keeps meaning "latest of this run".

    Args:
        run_dir: the run folder.
        step: optimizer steps completed; must equal `state.step`.
        model: a `transformers` PreTrainedModel (anything with `save_pretrained`).
        tokenizer: its tokenizer (anything with `save_pretrained`).
        optimizer: the optimizer whose `state_dict()` is saved.
        state: data position and elapsed time.
        config: the resolved trainer config, YAML-serialisable (plain types only).
        keep_last: keep this many newest checkpoints (None keeps all).
        generators: named `torch.Generator`s whose states are saved with the global RNGs.
        scaler: float16's loss scaler (`Precision.scaler`), whose scale and growth tracker are
            saved so a resumed run scales its loss as the straight run would.
    Returns:
        The checkpoint folder.
    Raises:
        ValueError: step mismatch, keep_last < 1, or state/config not serialisable.
    """
    if state.step != step:
        raise ValueError(f"state.step ({state.step}) != step ({step})")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    # Serialise the small files first so a bad value fails before anything touches the disk.
    try:
        train_state = json.dumps(
            {"step": step, "elapsed_s": state.elapsed_s, "data_state": state.data_state}, indent=1
        )
        config_yaml = yaml.safe_dump(dict(config), sort_keys=False)
    except (TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"checkpoint state/config is not serialisable: {e}") from e

    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(_capture_rng(generators or {}), tmp / "rng.pt")
        save_scaler(tmp, scaler)
        (tmp / "train_state.json").write_text(train_state)
        (tmp / "train_config.yaml").write_text(config_yaml)
        _write_meta(tmp, step, state.elapsed_s, type(model).__name__)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", final)
    _prune(root, step, keep_last)
    return final


def _write_meta(folder: Path, step: int, elapsed_s: float, model_name: str) -> None:
    """meta.json goes last: its presence, sizes and weights hash vouch for the rest."""
    weights = {p: _sha256(folder / p) for p in _weight_files(folder)}
    if not weights:
        raise CheckpointError(f"{model_name}.save_pretrained wrote no *.safetensors")
    meta = {
        "step": step,
        "wall_time_s": elapsed_s,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tropd_version": _tropd_version(),
        "files": {p: (folder / p).stat().st_size for p in _relative_files(folder)},
        "weights_sha256": weights,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def _publish(tmp: Path, final: Path) -> None:
    """Make `tmp` durable, then rename it to `final` (atomic within one filesystem)."""
    for rel in _relative_files(tmp):
        _fsync_path(tmp / rel)
    _fsync_path(tmp)
    if final.exists():
        logger.warning("replacing existing checkpoint %s", final)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(final.parent)


def find_latest_checkpoint(run_dir: Path | str, verify_hash: bool = True) -> Path | None:
    """Newest complete checkpoint of a run, skipping corrupt or partial ones with a warning.

    Args:
        run_dir: the run folder (its `checkpoints/` is searched).
        verify_hash: also recompute the weights' sha256 (reads the weights once).
    Returns:
        The checkpoint folder, or None when there is no good checkpoint.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(_TMP_PREFIX):
            logger.warning("skipping %s: unfinished checkpoint write (safe to delete)", entry)
    for _, path in sorted(_step_dirs(root), reverse=True):
        try:
            verify_checkpoint(path, verify_hash=verify_hash)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", path, e)
            continue
        return path
    return None


def verify_checkpoint(path: Path | str, verify_hash: bool = True) -> dict[str, Any]:
    """Check a checkpoint folder against its meta.json.

    Args:
        path: a `step-NNNNNN` folder.
        verify_hash: also recompute the weights' sha256.
    Returns:
        The parsed meta.json.
    Raises:
        CheckpointError: naming what is missing, truncated or altered.
    """
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        files: dict[str, int] = meta["files"]
        hashes: dict[str, str] = meta["weights_sha256"]
        step = int(meta["step"])
    except FileNotFoundError:
        raise CheckpointError(f"no {META_FILE} (incomplete write?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"unreadable {META_FILE}: {e!r}") from None
    if path.name != step_dir_name(step):
        raise CheckpointError(f"{META_FILE} says step {step} but the folder is {path.name}")
    for rel, size in files.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"missing file {rel}")
        if file.stat().st_size != size:
            raise CheckpointError(f"{rel} has {file.stat().st_size} bytes, expected {size}")
    if verify_hash:
        for rel, digest in hashes.items():
            if _sha256(path / rel) != digest:
                raise CheckpointError(f"{rel} sha256 does not match {META_FILE}")
    return meta


def load_checkpoint(
    path: Path | str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Restore weights (in place), optimizer, RNG and loss-scale states; return the step and
    data position.

    Args:
        path: a checkpoint folder (e.g. from `find_latest_checkpoint`).
        model: the student, built with the same architecture; its parameters are overwritten.
        optimizer: built over `model`'s parameters with the same groups (None skips it).
        generators: named `torch.Generator`s to restore, as passed to `save_checkpoint`.
        scaler: float16's loss scaler, restored in place (a checkpoint without one leaves it at
            its initial scale, with a warning).
    Returns:
        The saved TrainState.
    Raises:
        CheckpointError: a corrupt checkpoint or weights that do not fit `model`.
    """
    path = Path(path)
    verify_checkpoint(path)
    _load_weights(path, model)
    if optimizer is not None:
        # Loaded on CPU: load_state_dict moves each state tensor to its parameter's device.
        saved_optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        try:
            optimizer.load_state_dict(saved_optimizer)
        except ValueError as e:  # parameter groups of other sizes
            raise CheckpointError(f"optimizer state does not fit: {e}") from e
    _restore_rng(
        torch.load(path / "rng.pt", map_location="cpu", weights_only=True), generators or {}
    )
    load_scaler(path, scaler)
    saved = json.loads((path / "train_state.json").read_text())
    logger.info("resumed from %s (step %d)", path, saved["step"])
    return TrainState(saved["step"], saved["data_state"], saved["elapsed_s"])


def _load_weights(path: Path, model: torch.nn.Module) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for rel in _weight_files(path):
        tensors.update(load_file(path / rel))
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = set(model.state_dict(keep_vars=True))
    loaded_ptrs = {params[k].data_ptr() for k in tensors if k in params}
    # Tied weights (lm_head = embeddings) are saved once; they count as loaded via their twin.
    missing = {
        k
        for k in expected - tensors.keys()
        if k not in params or params[k].data_ptr() not in loaded_ptrs
    }
    if not missing and tensors.keys() <= expected:
        _copy_into(model, tensors, strict=False)
        return
    # Some architectures rename keys when saving (transformers' weight conversions): let
    # `from_pretrained` undo that, then copy in place.
    logger.info("checkpoint keys differ from %s's; loading via from_pretrained", type(model))
    load = getattr(type(model), "from_pretrained", None)
    if load is None:
        raise CheckpointError(
            f"weights do not fit {type(model).__name__}: missing "
            f"{sorted(missing)[:5]}, unexpected "
            f"{sorted(tensors.keys() - expected)[:5]}"
        )
    dtype = next(model.parameters()).dtype
    _copy_into(model, load(path, dtype=dtype).state_dict(), strict=True)


def _copy_into(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], strict: bool) -> None:
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as e:  # shape mismatches and, with strict, key mismatches
        raise CheckpointError(f"weights do not fit {type(model).__name__}: {e}") from e


def save_scaler(folder: Path, scaler: torch.amp.GradScaler | None) -> None:
    """Write `scaler.pt` (the loss scale, growth tracker and factors) when float16 has one."""
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), folder / SCALER_FILE)


def load_scaler(folder: Path, scaler: torch.amp.GradScaler | None) -> None:
    """Restore `scaler` from `scaler.pt`; a checkpoint from before the scale was saved (or
    from a float32/bfloat16 run) has none, and the scale restarts at its initial value."""
    if scaler is None or not scaler.is_enabled():
        return
    if not (folder / SCALER_FILE).is_file():
        logger.warning(
            "%s holds no float16 loss scale (%s); it restarts at %g, and the first steps may "
            "overflow and be skipped while it backs off", folder, SCALER_FILE, scaler.get_scale(),
        )  # fmt: skip
        return
    scaler.load_state_dict(torch.load(folder / SCALER_FILE, map_location="cpu", weights_only=True))


def rng_state() -> dict[str, Any]:
    """The process's global RNG states (python, numpy, torch, CUDA), as a checkpoint saves them."""
    return _capture_rng({})


def set_rng_state(rng: dict[str, Any]) -> None:
    """Put back global RNG states taken by `rng_state`."""
    _restore_rng(rng, {})


def _capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"])},
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    # Only a process that has touched CUDA has CUDA RNG state worth saving.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore_rng(rng: dict[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    random.setstate(rng["python"])
    np_state = rng["numpy"]
    np.random.set_state(
        {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].numpy()}}
    )
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        saved = rng["cuda"]
        if len(saved) != torch.cuda.device_count():
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this process sees %d",
                len(saved),
                torch.cuda.device_count(),
            )
        for device, state in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    saved_gens: dict[str, torch.Tensor] = rng["generators"]
    for name, generator in generators.items():
        if name in saved_gens:
            generator.set_state(saved_gens[name])
        else:
            logger.warning(
                "checkpoint has no state for generator %r (saved: %s); left as is",
                name,
                sorted(saved_gens),
            )
    for name in saved_gens.keys() - generators.keys():
        logger.warning("checkpoint state for generator %r not restored: not passed in", name)


def _prune(root: Path, step: int, keep_last: int | None) -> None:
    steps = sorted(_step_dirs(root))
    for s, path in steps:
        if s > step:
            logger.warning(
                "removing %s: newer than the checkpoint just saved (abandoned run)", path
            )
            shutil.rmtree(path)
    kept = [(s, p) for s, p in steps if s <= step]
    if keep_last is not None:
        for _, path in kept[:-keep_last]:
            logger.info("pruning checkpoint %s (keep_last=%d)", path, keep_last)
            shutil.rmtree(path)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return found


def _relative_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _weight_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*.safetensors"))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tropd_version() -> str:
    try:
        return version("tropd")
    except PackageNotFoundError:
        return "unknown"
