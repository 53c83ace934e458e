"""`tropd-teacher`: serve a teacher, inspect one, score a sequence, build a tiny test model.

    tropd-teacher serve --model PATH [--port 50051 --http-port 8080 ...]   # SIGTERM drains
    tropd-teacher info --target HOST:PORT
    tropd-teacher score --target HOST:PORT --ids 1,5,9,2 [--start 1] [--top-k 5]
    tropd-teacher score --target HOST:PORT --text "the sum" --tokenizer MODEL_DIR
    tropd-teacher health --target HOST:PORT        # exit 0 when SERVING (Docker HEALTHCHECK)
    tropd-teacher build-tiny OUT [--arch llama|qwen2|gpt2] [--preset tiny|bench-10m]

Exit codes: 0 success, 1 failure (server error, not serving), 2 bad input or configuration
(a malformed tokens file included). Every `serve` option also reads from TEACHER_<OPTION> (e.g.
TEACHER_MAX_BATCH_TOKENS); flags win; a yes/no option given bare (`--allow-anonymous`) means
true. `serve` re-reads its --tokens-file on SIGHUP. `info` and `score` send TEACHER_TOKEN (or
--token) as the job token; `info`, `score` and `health` speak TLS with --tls-ca-file (and mutual
TLS with --tls-cert-file/--tls-key-file).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from typing import Any

import grpc

from tropd.errors import ConfigError
from tropd.teacher.auth import TokensFileError
from tropd.teacher.client import (
    TeacherClient,
    TeacherClientError,
    TeacherRpcError,
    TokenizerMismatch,
)
from tropd.teacher.config import ServerConfig, env_name, load_config

_BAD_INPUT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


class UsageError(Exception):
    """Bad command-line input: printed, exit code 2."""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run a teacher server (gRPC + HTTP side port) until SIGTERM/SIGINT",
        description="Run a teacher server. Each option falls back to its TEACHER_* environment "
        "variable, then to the default. On SIGTERM/SIGINT: health NOT_SERVING, new calls get "
        "UNAVAILABLE, in-flight work drains for up to --drain-grace-s, exit 0.",
    )
    # One flag per config field, generated so that the config model stays the only definition.
    for name, field in ServerConfig.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default}"
        flag = {"nargs": "?", "const": "true"} if field.annotation is bool else {}
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description} [env {env_name(name)}; {default}]",
            **flag,
        )
    p.add_argument("--log-level", default="INFO", help="logging level [default INFO]")


def _add_client_commands(sub: argparse._SubParsersAction) -> None:
    target = {"required": True, "help": "teacher gRPC address, host:port"}
    token = {"default": None, "help": "job token [default: env TEACHER_TOKEN]"}
    p = sub.add_parser("info", help="print what a teacher serves (model, tokenizer, limits)")
    p.add_argument("--target", **target)
    p.add_argument("--token", **token)
    _add_tls(p)
    p = sub.add_parser("health", help="exit 0 when the teacher reports SERVING, 1 otherwise")
    p.add_argument("--target", **target)
    _add_tls(p)
    p.add_argument("--service", default="", help='health service name [default "" (server)]')
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait [default 3]")
    p = sub.add_parser("score", help="score one sequence and print a per-position table")
    p.add_argument("--target", **target)
    p.add_argument("--token", **token)
    _add_tls(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", help="comma-separated token ids, e.g. 1,5,9,2")
    what.add_argument("--text", help="text to tokenize with --tokenizer (bos prepended)")
    p.add_argument(
        "--tokenizer",
        help="local tokenizer/model folder (needed by --text; "
        "with --ids it labels the tokens); checked against the teacher's fingerprint",
    )
    p.add_argument("--start", type=int, default=1, help="first scored position (>= 1) [1]")
    p.add_argument("--end", type=int, default=0, help="one past the last position [0 = end]")
    p.add_argument("--top-k", type=int, default=5, help="teacher top-k shown per position [5]")


def _add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca-file", help="PEM CA bundle: connect over TLS, trusting these CAs")
    p.add_argument("--tls-cert-file", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key-file", help="PEM key of --tls-cert-file")


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from the --tls-* files, or None for plaintext."""
    from tropd.teacher.client import tls_credentials

    try:
        return tls_credentials(args.tls_ca_file, args.tls_cert_file, args.tls_key_file)
    except ValueError as exc:
        raise UsageError(f"--tls-*: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tropd-teacher",
        description="The tropd teacher service: token log-prob scoring and generation over gRPC.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_client_commands(sub)
    p = sub.add_parser("build-tiny", help="write a tiny random-weight model + tokenizer folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--arch", default="llama", choices=["llama", "qwen2", "gpt2"])
    p.add_argument("--preset", default="tiny", choices=["tiny", "bench-10m"])
    p.add_argument("--seed", type=int, default=0)
    return parser


def default_threads() -> int:
    """Half the CPUs this process may run on (its affinity, not the host's count), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def set_torch_threads(config: ServerConfig) -> int | None:
    """Set the serving process's torch CPU threads (`threads`, else `default_threads`).

    Why not torch's default (every core): a CPU teacher next to a trainer on a small machine
    then fights it for every core, and both slow down many times over.

    Returns:
        The thread count set, or None when torch is not installed (the TGI backend).
    """
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    threads = config.threads or default_threads()
    torch.set_num_threads(threads)
    return threads


def cmd_serve(args: argparse.Namespace) -> int:
    from tropd.teacher.server import serve_until_signal  # the server stack, only when serving

    config = load_config({name: getattr(args, name) for name in ServerConfig.model_fields})
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"teacher config: {config.to_json()}", flush=True)
    threads = set_torch_threads(config)
    if threads is not None:
        print(f"teacher torch threads: {threads}", flush=True)

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve_until_signal(config, stop)

    try:
        drained = asyncio.run(main())
    except (TokensFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"teacher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"teacher stopped ({'drained' if drained else 'grace period ran out'})", flush=True)
    return 0


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("TEACHER_TOKEN") or None


def cmd_info(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    with TeacherClient(
        args.target, _token(args), timeout=10, max_retries=1, credentials=credentials
    ) as client:
        info = client.info()
    rows: list[tuple[str, Any]] = [
        ("model", info.model_id), ("backend", info.backend), ("dtype", info.dtype),
        ("device", info.device), ("vocab size", info.vocab_size),
        ("tokenizer", info.fingerprint.short()), ("server", info.server_version),
    ]  # fmt: skip
    # The caps; the vocabulary size and the capabilities have rows of their own.
    rows += [(k.replace("_", " "), v) for k, v in vars(info.limits).items() if k.startswith("max_")]
    caps = [k for k, v in vars(info.capabilities).items() if v]
    rows.append(("capabilities", ", ".join(caps)))
    for key, value in rows:
        print(f"{key:>22}: {value}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = _credentials(args)
    channel = (
        grpc.secure_channel(args.target, credentials)
        if credentials is not None
        else grpc.insecure_channel(args.target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"--ids {text!r}: expected comma-separated integers, e.g. 1,5,9") from None


def _tokenizer(path: str | None) -> Any:
    if path is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer there ({exc})") from None


def _encode(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    # Position 0 is never scored; a leading bos makes the first word scorable.
    return [bos, *ids] if bos is not None and (not ids or ids[0] != bos) else ids


def cmd_score(args: argparse.Namespace) -> int:
    from tropd.teacher.fingerprint import fingerprint_of

    tokenizer = _tokenizer(args.tokenizer)
    if args.text is not None and tokenizer is None:
        raise UsageError("--text needs --tokenizer PATH (the teacher only takes token ids)")
    ids = _encode(tokenizer, args.text) if args.text is not None else _parse_ids(args.ids)
    label = (lambda i: tokenizer.convert_ids_to_tokens(int(i))) if tokenizer else str
    credentials = _credentials(args)
    with TeacherClient(
        args.target, _token(args), timeout=30, max_retries=2, credentials=credentials
    ) as client:
        if tokenizer is not None:
            client.check_tokenizer(fingerprint_of(tokenizer))
        (row,) = client.score(
            [ids], args.start, args.end or None, top_k=args.top_k, extras=("rank", "entropy")
        )
    print(f"{'pos':>4}  {'token':<14} {'log-prob':>9} {'rank':>5} {'entropy':>8}  top-k")
    for i, lp in enumerate(row.logprobs):
        pos = args.start + i
        top = ""
        if row.topk_ids is not None and row.topk_logprobs is not None:
            top = "  ".join(
                f"{label(t)}:{float(v):.2f}"
                for t, v in zip(row.topk_ids[i], row.topk_logprobs[i], strict=True)
            )
        rank = int(row.rank[i]) if row.rank is not None else -1
        entropy = float(row.entropy[i]) if row.entropy is not None else float("nan")
        token = str(label(ids[pos]))[:14]
        print(f"{pos:>4}  {token:<14} {float(lp):>9.4f} {rank:>5} {entropy:>8.3f}  {top}")
    print(
        f"sum log-prob {float(row.logprobs.astype('float64').sum()):.4f} over {len(row.logprobs)}"
    )
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from tropd.teacher.tiny_models import build_tiny_cli

    print(build_tiny_cli(args.out, args.arch, args.preset, args.seed))
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "info": cmd_info,
    "health": cmd_health,
    "score": cmd_score,
    "build-tiny": cmd_build_tiny,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tropd-teacher`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, TokenizerMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TeacherRpcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.code in _BAD_INPUT else 1
    except TeacherClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
