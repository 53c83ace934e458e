"""Checkpoints across processes (`train.parallel`): the layout of `checkpoint.py` with the model
and optimizer as `torch.distributed.checkpoint` shards under `dcp/` (each rank writes its own),
`rng-rank<r>.pt` per rank instead of rng.pt, and the HF export of the full model from rank 0;
meta.json (written by rank 0 after every rank is done) also records the world size. Written and
published with checkpoint.py's own helpers, so `find_latest_checkpoint` treats both alike.
float16's loss scale (DDP only; config.py refuses float16 under FSDP) is one `scaler.pt` from
rank 0: DDP averages gradients before they are unscaled, so every rank's scaler is the same.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from tropd.trainer.checkpoint import (
    _TMP_PREFIX,
    CHECKPOINTS_DIR,
    CheckpointError,
    TrainState,
    _capture_rng,
    _prune,
    _publish,
    _restore_rng,
    _write_meta,
    load_scaler,
    save_scaler,
    step_dir_name,
    verify_checkpoint,
)
from tropd.trainer.distributed import Ranks

logger = logging.getLogger(__name__)


def save_sharded_checkpoint(
    run_dir: Path | str,
    step: int,
    ranks: Ranks,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: Mapping[str, Any],
    keep_last: int | None = 3,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """`save_checkpoint` across processes; every rank calls it at the same step boundary.

    The model and optimizer go through `torch.distributed.checkpoint` (get_state_dict of the
    DDP / FSDP2 wrapper, each rank writing its shards); rank 0 exports the full model with
    `save_pretrained`, writes the small files and meta.json after a barrier, then renames.
    A shared temp name (not per process) lets every rank write into one folder.

    Args:
        ranks: this process's place; `ranks.module` is the wrapped student.
        model: the HF student (its class and config write the export; its weights come from
            the gathered full state dict).
    Returns:
        The checkpoint folder.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if state.step != step:
        raise ValueError(f"state.step ({state.step}) != step ({step})")
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if ranks.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    ranks.barrier()
    wrapped = ranks.wrapper
    model_sd, optim_sd = get_state_dict(wrapped, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    hf = ranks.hf_state_dict()
    torch.save(_capture_rng({}), tmp / f"rng-rank{ranks.rank}.pt")
    if ranks.is_main:
        model.save_pretrained(tmp, state_dict=hf)
        tokenizer.save_pretrained(tmp)
        save_scaler(tmp, scaler)
        (tmp / "train_state.json").write_text(json.dumps(
            {"step": step, "elapsed_s": state.elapsed_s, "data_state": state.data_state,
             "world_size": ranks.world, "parallel": ranks.parallel}, indent=1))  # fmt: skip
        (tmp / "train_config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    ranks.barrier()  # every rank's shards and RNG are on disk
    if ranks.is_main:
        _write_meta(tmp, step, state.elapsed_s, type(model).__name__)
        _publish(tmp, final)
        logger.info("saved checkpoint %s (%d ranks, %s)", final, ranks.world, ranks.parallel)
        _prune(root, step, keep_last)
    ranks.barrier()  # nobody reads "latest" before it exists
    return final


def load_sharded_checkpoint(
    path: Path | str,
    ranks: Ranks,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Restore a `save_sharded_checkpoint` into the wrapped student, its optimizer, this
    rank's RNGs and float16's loss scaler; every rank calls it.

    Raises:
        CheckpointError: a corrupt checkpoint, or one written by another world size or
            `train.parallel` (per-rank RNG states and the data split would not carry over).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    verify_checkpoint(path, verify_hash=ranks.is_main)
    saved = json.loads((path / "train_state.json").read_text())
    was = (saved.get("world_size", 1), saved.get("parallel", "none"))
    if was != (ranks.world, ranks.parallel):
        raise CheckpointError(
            f"{path} was written by {was[0]} process(es) with train.parallel={was[1]}, this run "
            f"is {ranks.world} with {ranks.parallel}; resume with the same launch (torchrun "
            "--nproc-per-node / --nnodes and train.parallel), or start from its HF export with "
            f"a new train.run_dir and student.path={path}"
        )
    model_sd, optim_sd = get_state_dict(ranks.wrapper, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))  # in place
    set_state_dict(ranks.wrapper, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    _restore_rng(
        torch.load(path / f"rng-rank{ranks.rank}.pt", map_location="cpu", weights_only=True), {}
    )
    load_scaler(path, scaler)
    return TrainState(saved["step"], saved["data_state"], saved["elapsed_s"])
