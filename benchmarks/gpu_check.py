"""GPU checks: what only a CUDA machine shows, in one short run.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json   # on a CUDA host
    .venv/bin/python benchmarks/gpu_check.py --smoke                         # CPU rehearsal

1. precision - the HF backend on CUDA in float32 and bfloat16 against an independent float32
   CPU reference (`log_softmax` of the full logits), on the trained built-in teacher and on a
   random Llama with a 32k vocabulary; the same through the real gRPC server, and bf16 batch
   mixing (one sequence alone vs inside a batch of 8 random others).
2. throughput - scored tokens/s and peak GPU memory for Llama-shaped random weights of ~1B and
   ~8B parameters in bf16: in-process batched `backend.score` vs the service with 1 and 8
   concurrent clients (clients in another process, as in teacher_throughput.py).
3. trainer - the demo recipe with student and teacher on CUDA: a short run (accuracy before and
   after, seconds per step), and 4 straight steps vs 2 + resume + 2 (loss and weight diffs).

Tolerances are stated here, before the run, and the JSON records pass/fail against them:
float32 on CUDA must match the CPU reference within 1e-4 (the CPU tests' bound); bfloat16 must
keep the mean |log-prob error| of the given tokens <= 0.05 nats, flip the trust-region test
(log-prob >= -5) for <= 2% of tokens, and agree on the argmax for >= 98% of positions.
Each section appends to the JSON as it finishes, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # teacher_throughput beside this one

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_K = 16
TAU = -5.0  # the trust-region threshold of the default recipes
TOLERANCE = {
    "float32_max_abs": 1e-4,
    "bfloat16_mean_abs": 0.05,
    "bfloat16_trust_flip_fraction": 0.02,
    "bfloat16_top1_agreement": 0.98,
}

# Llama-shaped sizes (TinyLlama-1.1B and Llama-3-8B layouts) for random-weight throughput runs.
LLAMA_SIZES = {
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                     num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                     max_position_embeddings=2048),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     max_position_embeddings=8192),
    "smoke": dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
}  # fmt: skip


class Report:
    """The JSON result, rewritten after every section."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        print(f"== {key}\n{json.dumps(value, indent=2, default=float)}", flush=True)


# ---------------------------------------------------------------- precision


def _reference(model_dir: Path, seqs: list[np.ndarray], start: int) -> list[dict[str, np.ndarray]]:
    """Independent float32 CPU answers: log_softmax over the full logits of the HF model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for ids in seqs:
            logits = model(torch.as_tensor(ids[None], dtype=torch.long)).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)[start - 1 : len(ids) - 1]
            given = lp.gather(1, torch.as_tensor(ids[start:], dtype=torch.long)[:, None])[:, 0]
            top = lp.topk(TOP_K, dim=-1)
            entropy = -(lp.exp() * lp).sum(-1)
            out.append({
                "logprobs": given.numpy(), "topk_ids": top.indices.numpy(),
                "topk_logprobs": top.values.numpy(), "entropy": entropy.numpy(),
            })  # fmt: skip
    return out


def _compare(ref: list[dict[str, np.ndarray]], got: list[Any]) -> dict[str, float]:
    pairs = list(zip(ref, got, strict=True))
    lp_ref = np.concatenate([r["logprobs"] for r in ref])
    lp_got = np.concatenate([g.logprobs for g in got])
    err = np.abs(lp_got - lp_ref)
    top1 = np.concatenate([r["topk_ids"][:, 0] == g.topk_ids[:, 0] for r, g in pairs])
    overlap = np.mean([
        len(set(a) & set(b)) / TOP_K
        for r, g in pairs for a, b in zip(r["topk_ids"], g.topk_ids, strict=True)
    ])  # fmt: skip
    ent = np.concatenate([np.abs(r["entropy"] - g.entropy) for r, g in pairs])
    return {
        "positions": int(lp_ref.size),
        "logprob_max_abs": float(err.max()),
        "logprob_mean_abs": float(err.mean()),
        "logprob_p99_abs": float(np.quantile(err, 0.99)),
        "trust_flip_fraction": float(np.mean((lp_ref >= TAU) != (lp_got >= TAU))),
        "top1_agreement": float(top1.mean()),
        f"top{TOP_K}_overlap": float(overlap),
        "entropy_max_abs": float(ent.max()),
    }


def _verdict(dtype: str, stats: dict[str, float]) -> bool:
    if dtype == "float32":
        return stats["logprob_max_abs"] <= TOLERANCE["float32_max_abs"]
    return (
        stats["logprob_mean_abs"] <= TOLERANCE["bfloat16_mean_abs"]
        and stats["trust_flip_fraction"] <= TOLERANCE["bfloat16_trust_flip_fraction"]
        and stats["top1_agreement"] >= TOLERANCE["bfloat16_top1_agreement"]
    )


def _world_teacher_sequences(model_dir: Path, n: int) -> tuple[list[np.ndarray], int]:
    """Prompt + a reference answer in the student's habit style: mostly tokens the trained
    teacher is sure of, plus the separators it would not write (confident disagreement)."""
    from transformers import AutoTokenizer

    from tropd.trainer.tasks.addition import STYLES, AdditionConfig, AdditionTask

    tok = AutoTokenizer.from_pretrained(model_dir)
    task = AdditionTask(AdditionConfig(digits=4))
    seqs, start = [], 0
    for ex in task.eval_examples()[:n]:
        prompt = list(tok(ex.prompt)["input_ids"])  # with the tokenizer's own special tokens
        answer = task.reference_completion(ex, STYLES["habit"])  # off-style tokens too
        seqs.append(np.asarray(prompt + tok.encode(answer, add_special_tokens=False), np.int32))
        start = len(prompt)  # fixed-width prompts: the same for every example
    return seqs, start


def _random_sequences(vocab: int, n: int, lengths: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(4, vocab, lengths[i % len(lengths)], dtype=np.int32) for i in range(n)]


def check_precision(models: dict[str, tuple[Path, list[np.ndarray], int]], device: str) -> dict:
    from tropd.teacher.backends import load_backend
    from tropd.teacher.backends.base import ScoreTask

    results: dict[str, Any] = {}
    for name, (model_dir, seqs, start) in models.items():
        ref = _reference(model_dir, seqs, start)
        tasks = [ScoreTask(s, start, len(s), top_k=TOP_K, want_entropy=True) for s in seqs]
        results[name] = {}
        for dtype in ("float32", "bfloat16"):
            backend = load_backend("hf", model_path=str(model_dir), device=device, dtype=dtype)
            backend.warmup()
            stats = _compare(ref, backend.score(tasks))
            stats["within_tolerance"] = _verdict(dtype, stats)
            results[name][dtype] = stats
            del backend
            _empty_cache(device)
    results["tolerance"] = TOLERANCE
    return results


def check_service_bf16(model_dir: Path, device: str) -> dict[str, float]:
    """bf16 through the real gRPC server: equal to in-process, and what batch mixing moves."""
    from tropd.teacher.backends import load_backend
    from tropd.teacher.backends.base import ScoreTask
    from tropd.teacher.client import TeacherClient
    from tropd.teacher.config import ServerConfig
    from tropd.teacher.server import start_server

    backend = load_backend("hf", model_path=str(model_dir), device=device, dtype="bfloat16")
    backend.warmup()
    vocab = backend.info().vocab_size
    probe = _random_sequences(vocab, 1, (200,))[0]
    others = _random_sequences(vocab, 7, (37, 64, 150, 255, 90, 128, 12))
    alone_inproc = backend.score([ScoreTask(probe, 8, len(probe), top_k=TOP_K)])[0]
    config = ServerConfig(model=str(model_dir), device=device, dtype="bfloat16",
                          host="127.0.0.1", port=0, http_port=0, max_top_k=TOP_K)  # fmt: skip
    with start_server(config, backend=backend) as handle, TeacherClient(handle.target) as client:
        alone = client.score([probe], [8], top_k=TOP_K)[0]
        mixed = client.score([*others[:3], probe, *others[3:]], [1] * 3 + [8] + [1] * 4,
                             top_k=TOP_K)[3]  # fmt: skip
    return {
        "service_vs_inprocess_max_abs": float(np.abs(alone.logprobs - alone_inproc.logprobs).max()),
        "mixed_vs_alone_max_abs": float(np.abs(mixed.logprobs - alone.logprobs).max()),
        "mixed_vs_alone_mean_abs": float(np.abs(mixed.logprobs - alone.logprobs).mean()),
        "mixed_vs_alone_top1_agreement": float(
            np.mean(mixed.topk_ids[:, 0] == alone.topk_ids[:, 0])
        ),
    }


# ---------------------------------------------------------------- throughput


def build_random_llama(out: Path, size: str, device: str) -> Path:
    """Random bf16 weights of a Llama layout, initialised on the device, saved as a folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tropd.teacher.tiny_models import build_tokenizer

    sizes = LLAMA_SIZES[size]
    config = LlamaConfig(**sizes, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)  # fmt: skip
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    build_tokenizer(96, sizes["max_position_embeddings"]).save_pretrained(out)
    del model
    _empty_cache(device)
    return out


def check_throughput(model_dir: Path, device: str, seq_len: int, num_seqs: int,
                     budget_tokens: int, clients: Any) -> dict[str, Any]:  # fmt: skip
    from teacher_throughput import Scenario, run_inprocess, server_config

    from tropd.teacher.backends import load_backend
    from tropd.teacher.server import start_server

    t0 = time.perf_counter()
    backend = load_backend("hf", model_path=str(model_dir), device=device, dtype="bfloat16")
    backend.warmup()
    load_s = time.perf_counter() - t0
    sc = Scenario("gpu", "random", seq_len, 64, num_seqs, 2, TOP_K, budget_tokens, 5.0, "")
    seqs = _random_sequences(backend.info().vocab_size, num_seqs, (seq_len,))
    per_batch = max(1, budget_tokens // (seq_len - 1))
    run_inprocess(backend, sc, seqs[:per_batch], per_batch)  # warm the kernels for this shape
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = {"inprocess_batched": run_inprocess(backend, sc, seqs, per_batch)}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    overrides = {"device": device, "dtype": "bfloat16", "max_message_bytes": 256 * 2**20}
    with start_server(server_config(model_dir, sc, **overrides), backend=backend) as handle:
        clients.run(handle.target, sc, seqs[:16], 8)  # warm the paths
        seconds["service_1"] = clients.run(handle.target, sc, seqs, 1)
        seconds["service_8"] = clients.run(handle.target, sc, seqs, 8)
    scored = num_seqs * (seq_len - sc.start)
    rate = {k: scored / s for k, s in seconds.items()}
    result = {
        "parameters": sum(p.numel() for p in backend.model.parameters()),
        "load_and_warmup_s": load_s,
        "sequences": num_seqs, "seq_len": seq_len, "scored_per_seq": seq_len - sc.start,
        "top_k": TOP_K, "batch_token_budget": budget_tokens,
        "scored_tokens_per_s": rate,
        "service_8_over_inprocess_batched": rate["service_8"] / rate["inprocess_batched"],
        "peak_gpu_memory_gib_inprocess": peak,
    }  # fmt: skip
    del backend
    _empty_cache(device)
    return result


# ---------------------------------------------------------------- trainer


def check_trainer(device: str, workdir: Path, steps: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    from tropd.teacher.config import ServerConfig
    from tropd.teacher.server import start_server
    from tropd.trainer.config import load_config
    from tropd.trainer.loop import train
    from tropd.trainer.run_log import read_metrics
    from tropd.trainer.setup import resolve_model_path

    teacher_dir = resolve_model_path("builtin:teacher")
    config = ServerConfig(model=str(teacher_dir), device=device, host="127.0.0.1", port=0,
                          http_port=0)  # fmt: skip
    common = ["train.progress=false", "train.tensorboard=false", "train.status_port=null",
              f"student.device={device}"]  # fmt: skip
    demo = REPO_ROOT / "configs" / "demo.yaml"
    with start_server(config) as teacher:
        common.append(f"teacher.target={teacher.target}")
        run = train(load_config(demo, [*common, f"train.steps={steps}",
                                       f"train.eval_every={steps}",
                                       f"train.run_dir={workdir / 'run'}"]))  # fmt: skip
        small = [*common, "rollout.prompts_per_step=8", "task.eval_size=16",
                 "train.eval_every=2", "train.checkpoint_every=2"]  # fmt: skip
        straight, split = workdir / "straight", workdir / "split"
        train(load_config(demo, [*small, "train.steps=4", f"train.run_dir={straight}"]))
        train(load_config(demo, [*small, "train.steps=2", f"train.run_dir={split}"]))
        train(load_config(demo, [*small, "train.steps=4", f"train.run_dir={split}"]))

    def losses(path: Path) -> np.ndarray:
        rows = read_metrics(path / "metrics.jsonl")
        return np.array([r["loss/total"] for r in rows if "loss/total" in r])

    a = load_file(straight / "checkpoints/step-000004/model.safetensors")
    b = load_file(split / "checkpoints/step-000004/model.safetensors")
    rows = read_metrics(workdir / "run" / "metrics.jsonl")
    run_losses = [r["loss/total"] for r in rows if "loss/total" in r]
    return {
        "steps": steps,
        "accuracy_before": run.accuracy_before,
        "accuracy_after": run.accuracy_after,
        "wall_s": run.wall_s,
        "mean_step_s": float(np.mean([r["perf/step_s"] for r in rows if "perf/step_s" in r])),
        "finite_losses": bool(np.isfinite(run_losses).all()),
        "resume_loss_max_abs": float(np.abs(losses(straight) - losses(split)).max()),
        "resume_weight_max_abs": max(float((a[k] - b[k]).abs().max()) for k in a),
    }  # fmt: skip


# ---------------------------------------------------------------- main


def _empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (a rehearsal)")
    parser.add_argument(
        "--skip-8b-after-s",
        type=float,
        default=300.0,
        help="skip the ~8B run if the checks so far took longer [300]",
    )
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a CUDA host, or pass --smoke (CPU rehearsal)")
    from teacher_throughput import ClientProcess

    from tropd.teacher.tiny_models import build_tiny_model

    device = "cpu" if args.smoke else "cuda"
    started = time.perf_counter()
    report = Report(args.out)
    report.put("environment", {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(), "smoke": args.smoke,
    })  # fmt: skip
    world_teacher = REPO_ROOT / "worlds" / "builtin" / "teacher"
    clients = ClientProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            hidden, layers = (64, 2) if args.smoke else (1024, 8)
            llama = build_tiny_model(tmp / "llama32k", "llama", vocab_words=96, hidden=hidden,
                                     layers=layers, heads=8, vocab_multiple=32000)  # fmt: skip
            seqs, start = _world_teacher_sequences(world_teacher, 64)
            report.put("precision", check_precision({
                "world_teacher_gpt2": (world_teacher, seqs, start),
                "random_llama_32k": (llama, _random_sequences(32000, 16, (64, 200, 511)), 8),
            }, device))  # fmt: skip
            report.put("service_bf16", check_service_bf16(llama, device))
            sizes = [("llama-1b", 1024, 128, 16384)]
            if args.smoke:
                sizes = [("smoke", 128, 32, 2048)]
            for size, seq_len, n, budget in sizes:
                model_dir = build_random_llama(tmp / size, size, device)
                report.put(
                    f"throughput_{size}",
                    check_throughput(model_dir, device, seq_len, n, budget, clients),
                )
            report.put("trainer", check_trainer(device, tmp / "trainer", 4 if args.smoke else 40))
            elapsed = time.perf_counter() - started
            if not args.smoke and elapsed < args.skip_8b_after_s:
                model_dir = build_random_llama(tmp / "llama-8b", "llama-8b", device)
                report.put(
                    "throughput_llama-8b",
                    check_throughput(model_dir, device, 1024, 128, 16384, clients),
                )
            else:
                report.put("throughput_llama-8b", f"skipped: {elapsed:.0f} s spent before it")
    finally:
        clients.close()
    report.put("wall_s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
