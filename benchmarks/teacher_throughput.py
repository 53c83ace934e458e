"""Teacher throughput: the service against in-process scoring, on one model, in one run.

    .venv/bin/python benchmarks/teacher_throughput.py            # full, ~minutes on 2 CPU cores
    .venv/bin/python benchmarks/teacher_throughput.py --quick    # smoke run (tests use it)

For each scenario, the same sequences are scored five ways, side by side, on one backend:
* inprocess_batched    - `backend.score` directly, batches packed to the token budget (ceiling);
* inprocess_one_by_one - `backend.score` on one sequence at a time (no network, no batching);
* naive_one_at_a_time  - the service without a batching delay, one request at a time;
* service_1            - the batching service, one client sending requests one after another;
* service_8            - the batching service with 8 concurrent clients (cross-client batches).
Clients run in a separate process (threads, one channel each), as student jobs would. It
prints scored tokens/s, the ratios and bytes per scored token on the wire, and writes JSON to
benchmarks/results/teacher_throughput.json (quick runs: ..._quick.json).

Scenarios: "long" is compute-bound (~10M-parameter model, 256-token sequences; target
service_8 >= 0.9x inprocess_batched); "short" is overhead-bound (tiny model, 32-token
sequences, one sequence per request; target service_8 >= 3x naive_one_at_a_time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from tropd.teacher.client import TeacherClient, build_score_request
from tropd.wire.v1 import teacher_pb2_grpc as pb_grpc

# Only light imports at module level: the client process (spawned) re-imports this module.
# torch, transformers and the server are imported inside the functions that need them.
if TYPE_CHECKING:
    from tropd.teacher.backends.base import Backend
    from tropd.teacher.config import ServerConfig

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Scenario:
    name: str
    preset: str  # teacher.tiny_models preset
    seq_len: int
    start: int  # first scored position (the "prompt" is ids[:start])
    num_sequences: int
    seqs_per_request: int
    top_k: int
    max_batch_tokens: int
    max_delay_ms: float
    target: str  # the claim this scenario checks, in words


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("long", "tiny", 64, 8, 16, 4, 8, 1024, 2.0, "service_8 >= 0.9x batched"),
            Scenario(
                "short", "tiny", 32, 4, 32, 1, 8, 2048, 1.0, "service_8 >= 3x naive_one_at_a_time"
            ),
        ]
    return [
        Scenario("long", "bench-10m", 256, 32, 128, 4, 16, 8192, 5.0, "service_8 >= 0.9x batched"),
        Scenario(
            "short", "tiny", 32, 4, 1024, 1, 16, 4096, 2.0, "service_8 >= 3x naive_one_at_a_time"
        ),
    ]


def make_sequences(sc: Scenario, vocab: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(4, vocab, sc.seq_len, dtype=np.int32) for _ in range(sc.num_sequences)]


def requests_of(sc: Scenario, seqs: list[np.ndarray]) -> list[list[np.ndarray]]:
    k = sc.seqs_per_request
    return [seqs[i : i + k] for i in range(0, len(seqs), k)]


def scored_tokens(sc: Scenario) -> int:
    return sc.num_sequences * (sc.seq_len - sc.start)


def run_inprocess(backend: Backend, sc: Scenario, seqs: list[np.ndarray], batch: int) -> float:
    """Seconds to score every sequence with `backend.score`, `batch` sequences per call."""
    from tropd.teacher.backends.base import ScoreTask

    tasks = [ScoreTask(ids, sc.start, sc.seq_len, top_k=sc.top_k) for ids in seqs]
    started = time.perf_counter()
    for i in range(0, len(tasks), batch):
        backend.score(tasks[i : i + batch])
    return time.perf_counter() - started


def _play_clients(target: str, sc: Scenario, shares: list[list[list[np.ndarray]]]) -> float:
    """Seconds for one thread per share, each with its own channel, to send its requests one
    after another (a closed loop, like a student job)."""
    clients = [TeacherClient(target, timeout=600) for _ in shares]
    for client in clients:
        client.info()  # connect before the clock starts

    def work(client: TeacherClient, share: list[list[np.ndarray]]) -> None:
        for request in share:
            client.score(request, sc.start, top_k=sc.top_k)

    with ThreadPoolExecutor(len(shares)) as pool:
        started = time.perf_counter()
        list(pool.map(work, clients, shares))
        seconds = time.perf_counter() - started
    for client in clients:
        client.close()
    return seconds


def _client_process_main(inbox: Any, outbox: Any) -> None:
    while (job := inbox.get()) is not None:
        try:
            outbox.put(_play_clients(*job))
        except Exception as exc:  # reported to the parent, which raises it
            outbox.put(f"{type(exc).__name__}: {exc}")


class ClientProcess:
    """The callers live in another process, as student jobs do, so their Python work does not
    compete with the server for the GIL of the process that runs the model."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_client_process_main, args=(self._inbox, self._outbox))
        self._proc.start()

    def run(self, target: str, sc: Scenario, seqs: list[np.ndarray], clients: int) -> float:
        """Seconds for `clients` concurrent clients to score every request (round-robin)."""
        reqs = requests_of(sc, seqs)
        self._inbox.put((target, sc, [reqs[c::clients] for c in range(clients)]))
        result = self._outbox.get(timeout=3600)
        if isinstance(result, str):
            raise RuntimeError(f"client failed: {result}")
        return result

    def close(self) -> None:
        self._inbox.put(None)
        self._proc.join(timeout=30)


def wire_bytes(target: str, sc: Scenario, seqs: list[np.ndarray]) -> dict[str, float]:
    """Request and response bytes per scored token, measured on real messages."""
    request = build_score_request(requests_of(sc, seqs)[0], sc.start, top_k=sc.top_k)
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.TeacherStub(channel).Score(request)
    scored = len(request.items) * (sc.seq_len - sc.start)
    return {
        "request_bytes_per_scored_token": request.ByteSize() / scored,
        "response_bytes_per_scored_token": response.ByteSize() / scored,
    }


def server_config(model_dir: Path, sc: Scenario, **overrides: Any) -> ServerConfig:
    from tropd.teacher.config import ServerConfig

    values: dict[str, Any] = {
        "model": str(model_dir), "host": "127.0.0.1", "port": 0, "http_port": 0,
        "max_batch_tokens": sc.max_batch_tokens, "max_delay_ms": sc.max_delay_ms,
        "max_top_k": max(sc.top_k, 1),
    }  # fmt: skip
    return ServerConfig(**{**values, **overrides})


def run_scenario(sc: Scenario, workdir: Path, callers: ClientProcess) -> dict[str, object]:
    from tropd.teacher.backends import load_backend
    from tropd.teacher.server import start_server
    from tropd.teacher.tiny_models import PRESETS, build_tiny_model

    model_dir = build_tiny_model(workdir / sc.name, "llama", seed=0, **PRESETS[sc.preset])
    backend = load_backend("hf", model_path=str(model_dir), dtype="float32")
    backend.warmup()
    info = backend.info()
    seqs = make_sequences(sc, info.tokenizer.vocab_size)
    per_batch = max(1, sc.max_batch_tokens // (sc.seq_len - 1))
    seconds = {
        "inprocess_batched": run_inprocess(backend, sc, seqs, per_batch),
        "inprocess_one_by_one": run_inprocess(backend, sc, seqs, 1),
    }
    # The naive service: no batching delay, one request at a time.
    with start_server(server_config(model_dir, sc, max_delay_ms=0.0), backend=backend) as naive:
        seconds["naive_one_at_a_time"] = callers.run(naive.target, sc, seqs, 1)
    with start_server(server_config(model_dir, sc), backend=backend) as handle:
        callers.run(handle.target, sc, seqs[: sc.seqs_per_request * 16], 8)  # warm paths
        seconds["service_1"] = callers.run(handle.target, sc, seqs, 1)
        seconds["service_8"] = callers.run(handle.target, sc, seqs, 8)
        wire = wire_bytes(handle.target, sc, seqs)
    tokens = scored_tokens(sc)
    rate = {name: tokens / s for name, s in seconds.items()}
    ratios = {
        "service_8_over_inprocess_batched": rate["service_8"] / rate["inprocess_batched"],
        "service_8_over_naive_one_at_a_time": rate["service_8"] / rate["naive_one_at_a_time"],
        "service_8_over_service_1": rate["service_8"] / rate["service_1"],
        "service_8_over_inprocess_one_by_one": rate["service_8"] / rate["inprocess_one_by_one"],
    }
    n_params = sum(p.numel() for p in backend.model.parameters())  # type: ignore[attr-defined]
    return {
        "scenario": asdict(sc),
        "model_parameters": n_params,
        "scored_tokens": tokens,
        "seconds": seconds,
        "scored_tokens_per_s": rate,
        "ratios": ratios,
        "wire": wire,
    }


def report(name: str, result: dict[str, object]) -> None:
    sc = result["scenario"]
    print(f"\n== {name}: {result['model_parameters'] / 1e6:.1f}M params, "
          f"{sc['num_sequences']} x {sc['seq_len']} tokens, {sc['seqs_per_request']} seq/request, "
          f"top-k {sc['top_k']}, budget {sc['max_batch_tokens']} tokens")  # fmt: skip
    for way, value in result["scored_tokens_per_s"].items():
        print(f"  {way:<20} {value:>12,.0f} scored tokens/s")
    for ratio, value in result["ratios"].items():
        print(f"  {ratio:<36} {value:6.2f}x")
    for key, value in result["wire"].items():
        print(f"  {key:<36} {value:6.1f}")
    print(f"  target: {sc['target']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument("--out", type=Path, help="JSON path [benchmarks/results/...]")
    parser.add_argument("--only", choices=["long", "short"], help="run one scenario")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("teacher_throughput_quick.json" if args.quick else
                                 "teacher_throughput.json")  # fmt: skip
    results = {}
    callers = ClientProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for sc in scenarios(args.quick):
                if args.only and sc.name != args.only:
                    continue
                load_before = os.getloadavg()[0]
                results[sc.name] = run_scenario(sc, Path(tmp), callers)
                # Other work on the machine skews the concurrent runs most: record it.
                results[sc.name]["load_average_1min"] = [load_before, os.getloadavg()[0]]
                report(sc.name, results[sc.name])
    finally:
        callers.close()
    payload = {
        "quick": args.quick,
        "torch_threads": args.threads,
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "scenarios": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
