"""`tropd-train`: run, resume and inspect distillation jobs.

    tropd-train demo                                  # the README's main job (CPU, minutes)
    tropd-train run --config configs/tropd.yaml optim.lr=5e-5 train.steps=200
    tropd-train print-config --config configs/tropd.yaml loss.method=opd
    tropd-train eval --model runs/x/checkpoints/step-000100
    tropd-train export-best --run-dir runs/x --out student-best   # with train.keep_best: true
    tropd-train build-world --out worlds/builtin
    tropd-train generate-drafts --out drafts.jsonl --teacher localhost:50051
    torchrun --nproc-per-node 2 -m tropd.trainer.cli run --config C train.parallel=fsdp

Exit codes: 0 done (or stopped cleanly by a signal, checkpoint written), 1 training aborted
(teacher lost, checkpoint written), 2 bad input (config, paths, tokenizer or capability mismatch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict

from tropd.errors import ConfigError
from tropd.trainer.config import describe_keys, dump_config, load_config
from tropd.trainer.errors import TrainerError, TrainingAborted

log = logging.getLogger("tropd.trainer")

_OVERRIDES_HELP = "dotted overrides, e.g. loss.method=opd optim.lr=1e-4 train.steps=50"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (see configs/); defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)


def _cmd_run(args: argparse.Namespace) -> int:
    from tropd.trainer.loop import train

    cfg = load_config(args.config, args.overrides)  # a bad config fails before any launch
    if args.nproc > 1 and "RANK" not in os.environ:
        if cfg.train.parallel == "none":  # refused here, before torchrun wraps it in a traceback
            raise ConfigError(f"--nproc {args.nproc} needs train.parallel=ddp or fsdp")
        _relaunch_under_torchrun(args)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone prints
    if main_rank:
        print(dump_config(cfg), file=sys.stderr)
    result = train(cfg)
    if main_rank:
        print(json.dumps(asdict(result), default=str))
    return 0


def _relaunch_under_torchrun(args: argparse.Namespace) -> None:
    """Replace this process by torchrun running the same command in `--nproc` processes on this
    machine (compose's STUDENT_NPROC); torchrun becomes the process that gets SIGTERM."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc}", "-m", "tropd.trainer.cli",
               *(["-v"] if args.verbose else []), "run",
               *(["--config", args.config] if args.config else []), *args.overrides]  # fmt: skip
    log.info("relaunching under torchrun: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _cmd_print_config(args: argparse.Namespace) -> int:
    from tropd.trainer.tasks import TaskError, check_task_options

    cfg = load_config(args.config, args.overrides)
    try:  # the task's own options too (unknown keys, missing data files), without loading data
        check_task_options(cfg.task.name, **cfg.task.options)
    except TaskError as exc:
        raise ConfigError(f"task: {exc}") from exc
    print(dump_config(cfg), end="")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from tropd.trainer.evaluate import evaluate_student
    from tropd.trainer.setup import load_data, load_student

    cfg = load_config(args.config, [*args.overrides, f"student.path={args.model}"])
    student = load_student(cfg)
    data = load_data(cfg, student.tokenizer, student.generation_eos)
    with student.precision.autocast():  # as the trainer evaluates (student.compute_dtype)
        result = evaluate_student(student.model, data.codec, data.task, data.eval,
                                  data.max_new_tokens)  # fmt: skip
    for sample in result.samples:
        print(sample.describe())
    print(
        json.dumps(
            {"model": args.model, "accuracy": result.accuracy, "examples": result.num_examples}
        )
    )
    return 0


def _cmd_export_best(args: argparse.Namespace) -> int:
    from tropd.trainer.keep_best import export_best

    try:
        record = export_best(args.run_dir, args.out)
    except (FileNotFoundError, FileExistsError) as exc:
        raise ConfigError(str(exc)) from exc
    print(json.dumps({"out": args.out, "step": record.step, "accuracy": record.accuracy}))
    return 0


def _cmd_generate_drafts(args: argparse.Namespace) -> int:
    from tropd.teacher.client import TeacherClient
    from tropd.trainer.guidance import DraftRequest, write_drafts
    from tropd.trainer.setup import load_data, load_tokenizer
    from tropd.trainer.teacher_link import wait_for_teacher

    cfg = load_config(args.config, args.overrides)
    data = load_data(cfg, *load_tokenizer(cfg))
    with TeacherClient(args.teacher or cfg.teacher.target, token=cfg.teacher.token) as client:
        info = wait_for_teacher(client, cfg.teacher.wait_ready_s)
        request = DraftRequest(
            data.max_new_tokens,
            data.codec.eos_ids,
            cfg.guidance.temperature,
            info.limits.max_request_tokens,
        )
        n = write_drafts(client, data.codec, data.train, args.out, request, seed=cfg.train.seed)
    print(f"wrote {n} drafts to {args.out}")
    return 0


def _cmd_build_world(args: argparse.Namespace) -> int:
    from tropd.trainer.world import main as world_main

    return int(world_main(args.world_args) or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tropd.trainer.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tropd-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = "config keys (KEY = default  what it is):\n  " + "\n  ".join(describe_keys())
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "run", help="train (resuming from the newest checkpoint of train.run_dir)",
        epilog=keys, formatter_class=raw,
    )  # fmt: skip
    _add_config_args(p)
    p.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="N > 1: run as N processes on this machine under torchrun --standalone (needs "
        "train.parallel=ddp or fsdp); several machines: launch torchrun yourself",
    )  # fmt: skip
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser(
        "print-config", help="print the resolved config (task files checked) and exit",
        epilog=keys, formatter_class=raw,
    )  # fmt: skip
    _add_config_args(p)
    p.set_defaults(fn=_cmd_print_config)

    p = sub.add_parser("eval", help="task accuracy of a student checkpoint (greedy)")
    p.add_argument("--model", required=True, help="HF folder (a checkpoint) or builtin:NAME")
    _add_config_args(p)
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser(
        "export-best", help="copy the best-eval student a run kept (train.keep_best) to a folder"
    )
    p.add_argument("--run-dir", required=True, help="the run's train.run_dir")
    p.add_argument("--out", required=True, help="new folder for the HF-format student")
    p.set_defaults(fn=_cmd_export_best)

    p = sub.add_parser("generate-drafts", help="write teacher drafts for guidance to a JSONL file")
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--teacher", help="teacher host:port (default: teacher.target of the config)")
    _add_config_args(p)
    p.set_defaults(fn=_cmd_generate_drafts)

    # Its own parser reads the rest of the line (see main): `tropd-train build-world --help`.
    p = sub.add_parser(
        "build-world", help="regenerate the built-in world (teacher + students)", add_help=False
    )
    p.set_defaults(fn=_cmd_build_world, world_args=[])

    p = sub.add_parser("demo", help="teacher service + OPD vs TrOPD on the built-in world (CPU)")
    from tropd.trainer.demo import add_demo_args

    add_demo_args(p)
    p.set_defaults(fn=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.fn is _cmd_build_world:
        args.world_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Under torchrun only rank 0 speaks at INFO; the others warn (rank-prefixed by torchrun).
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.fn(args))
    except (ConfigError, TrainerError) as exc:  # bad input: config, paths, tokenizer, capabilities
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingAborted as exc:  # the teacher was lost mid-run; a checkpoint was written
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
