"""Which temperature should the teacher write guidance drafts at? (`guidance.temperature`)

    .venv/bin/python benchmarks/draft_temperature.py            # drafts + training (~15 min)
    .venv/bin/python benchmarks/draft_temperature.py --no-train # draft accuracy only (~1 min)

1. Draft accuracy: the built-in and the long world's teachers (served on loopback, one thread)
   write one draft per train prompt at each temperature; the task's verifier scores them. A
   guidance prefix is the opening of a draft, so a wrong draft teaches a wrong opening.
2. Training: configs/bench/default.yaml with guidance on every other prompt (TrOPD,
   guidance.fraction=0.5) and the `sft` baseline (trains on whole drafts), at temperature 0
   (greedy) and 1.0, a few seeds each; the final eval accuracy of each run.

Writes benchmarks/results/draft_temperature.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLDS = {  # name: (world folder, digits of its task)
    "builtin": (REPO_ROOT / "worlds" / "builtin", 4),
    "long": (REPO_ROOT / "worlds" / "long", 12),
}
TEMPERATURES = (0.0, 0.3, 0.5, 0.7, 1.0)
TRAIN_TEMPERATURES = (0.0, 1.0)
METHODS = {
    "tropd_guided": ["loss.method=tropd", "guidance.fraction=0.5"],
    "sft": ["loss.method=sft"],
}


def draft_accuracy(world: Path, digits: int, prompts: int) -> dict[str, float]:
    """Share of correct teacher drafts per temperature, over the first `prompts` train prompts."""
    from tropd.teacher.client import TeacherClient
    from tropd.teacher.config import ServerConfig
    from tropd.teacher.server import start_server
    from tropd.trainer.config import load_config
    from tropd.trainer.evaluate import score_responses
    from tropd.trainer.guidance import DraftRequest, teacher_drafts
    from tropd.trainer.setup import load_data, load_tokenizer

    cfg = load_config(None, [f"student.path={world / 'teacher'}",
                             f"task.options={{digits: {digits}}}"])  # fmt: skip
    data = load_data(cfg, *load_tokenizer(cfg))
    examples = data.train[:prompts]
    config = ServerConfig(model=str(world / "teacher"), host="127.0.0.1", port=0, http_port=0,
                          max_new_tokens=1024)  # fmt: skip
    out = {}
    with start_server(config) as server, TeacherClient(server.target, timeout=600) as client:
        for temperature in TEMPERATURES:
            request = DraftRequest(data.max_new_tokens, data.codec.eos_ids, temperature)
            drafts = teacher_drafts(client, data.codec.encode(examples), request, seed=0)
            responses = [data.codec.response(d) for d in drafts]
            out[str(temperature)] = score_responses(data.task, examples, responses).accuracy
            logging.info("%s T=%.1f: draft accuracy %.3f", world.name, temperature,
                         out[str(temperature)])  # fmt: skip
    return out


def training(seeds: list[int], runs: Path) -> list[dict[str, Any]]:
    """Final eval accuracy of guided TrOPD and SFT at each draft temperature and seed."""
    from tropd.teacher.config import ServerConfig
    from tropd.teacher.server import start_server
    from tropd.trainer.config import load_config
    from tropd.trainer.loop import train

    config = ServerConfig(model=str(REPO_ROOT / "worlds" / "builtin" / "teacher"),
                          host="127.0.0.1", port=0, http_port=0)  # fmt: skip
    rows = []
    with start_server(config) as server:
        for method, overrides in METHODS.items():
            for temperature in TRAIN_TEMPERATURES:
                for seed in seeds:
                    run_dir = runs / f"{method}-T{temperature}-s{seed}"
                    cfg = load_config(REPO_ROOT / "configs" / "bench" / "default.yaml", [
                        *overrides, f"guidance.temperature={temperature}",
                        f"train.seed={seed}", f"train.run_dir={run_dir}",
                        f"teacher.target={server.target}",
                    ])  # fmt: skip
                    t0 = time.monotonic()
                    result = train(cfg)
                    rows.append({"method": method, "temperature": temperature, "seed": seed,
                                 "accuracy_before": result.accuracy_before,
                                 "accuracy_after": result.accuracy_after,
                                 "wall_s": round(time.monotonic() - t0, 1)})  # fmt: skip
                    logging.info("%s", rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256, help="drafts per temperature")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-train", action="store_true", help="draft accuracy only")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "benchmarks" / "results" / "draft_temperature.json")
    )
    parser.add_argument("--runs", default="runs/draft_temperature")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "draft_accuracy": {name: draft_accuracy(path, digits, args.prompts)
                           for name, (path, digits) in WORLDS.items()},  # fmt: skip
        "prompts": args.prompts,
    }
    if not args.no_train:
        results["training"] = training(args.seeds, Path(args.runs))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
