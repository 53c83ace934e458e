"""One update step of a student under each `train.parallel` at world size 1: time and peak memory.

    python benchmarks/parallel_step.py --out benchmarks/results/parallel_step.json   # CUDA host
    .venv/bin/python benchmarks/parallel_step.py --smoke                            # CPU rehearsal

A random Qwen3 student of the ~1.7B shape (Qwen3-1.7B's layout: 28 layers, width 2048, 151,936
ids, tied embeddings), float32 master weights, bf16 autocast, gradient checkpointing, AdamW;
the same synthetic rollouts (prompt + response ids, `sft` loss: the forward, backward, clip and
AdamW every method pays) are updated by `update.apply_update` with parallel = none, ddp and fsdp
in one process (a one-rank gloo/NCCL group for the last two), side by side in one run. At world
size 1 neither engine can save memory; this shows what the wrappers cost (FSDP2 keeps sharded
DTensor parameters and all-gathers them per layer; DDP adds its gradient buckets). Two timed
steps after one warm-up step; peak memory is the CUDA allocator's peak over those steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import OptimConfig
from tropd.trainer.distributed import Ranks, join
from tropd.trainer.losses import LossConfig
from tropd.trainer.precision import Precision
from tropd.trainer.setup import enable_checkpointing, make_optimizer
from tropd.trainer.update import apply_update

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=4096, tie_word_embeddings=True),
    "smoke": dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=512, tie_word_embeddings=True),
}  # fmt: skip


def _rollouts(vocab: int, rows: int, prompt: int, response: int) -> list[TrainSequence]:
    rng = np.random.default_rng(0)
    return [TrainSequence(prompt_index=i, context_len=prompt,
                          ids=rng.integers(0, vocab, prompt + response).astype(np.int64),
                          prefix_len=0, behavior_logprobs=np.zeros(response, np.float32),
                          finish_reason="length") for i in range(rows)]  # fmt: skip


def _one_rank_group() -> None:
    """torchrun's environment for a single process, so `join` can open its group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip


def measure(parallel: str, size: str, device: str, rows: int, response: int) -> dict[str, Any]:
    if parallel == "none":
        ranks = Ranks.single()
    else:
        _one_rank_group()
        ranks = join(parallel, device, 600.0)
    torch.manual_seed(0)
    config = Qwen3Config(**SIZES[size])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    enable_checkpointing(model)
    model = model.to(device)
    ranks.wrap(model)
    optimizer = make_optimizer(model, OptimConfig(lr=1e-5))
    optim = OptimConfig(lr=1e-5, micro_batch_size=max(1, rows // 2))
    sequences = _rollouts(config.vocab_size, rows, 64, response)
    precision = Precision.of("bfloat16", device)
    cuda = device.startswith("cuda")

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        apply_update(model, optimizer, sequences, [None] * rows, LossConfig(method="sft"), optim,
                     torch.Generator().manual_seed(0), 0, precision, ranks)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()  # warm-up: kernels, allocator, optimizer state
    if cuda:
        torch.cuda.empty_cache()  # the previous mode's blocks
        torch.cuda.reset_peak_memory_stats()
    seconds = [step(), step()]
    result = {
        "parallel": parallel,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s": float(np.mean(seconds)),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    ranks.close()
    return result  # the model and optimizer go with this frame, before the next mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks/results/parallel_step.json"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny width on CPU (a rehearsal)")
    parser.add_argument("--rows", type=int, default=8, help="rollouts in the step")
    parser.add_argument("--response", type=int, default=1024, help="response tokens per rollout")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    size = "smoke" if args.smoke else "qwen3-1.7b"
    response = 32 if args.smoke else args.response
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; use --smoke for the CPU rehearsal")
    results = [measure(p, size, device, args.rows, response) for p in ("none", "ddp", "fsdp")]
    base = results[0]
    for r in results:
        r["step_s_vs_none"] = r["step_s"] / base["step_s"]
        if r["peak_gib"] is not None:
            r["peak_vs_none"] = r["peak_gib"] / base["peak_gib"]
    report = {
        "size": size, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "host": platform.node(), "rows": args.rows,
        "prompt_tokens": 64, "response_tokens": response, "results": results,
    }  # fmt: skip
    text = json.dumps(report, indent=1)
    print(text)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
