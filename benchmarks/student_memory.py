"""Student memory: peak extra memory of one update and one rollout, the old whole-logits path
against the chunked one, on tiny random Qwen3s of real vocabulary sizes (no download).

    .venv/bin/python benchmarks/student_memory.py             # full grid, ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/student_memory.py --quick     # smoke run (tests use it)
    .venv/bin/python benchmarks/student_memory.py --anchor    # loss.anchor_kl's cost, ~5 min
    python benchmarks/student_memory.py --gpu-check            # on a CUDA host: Qwen3-1.7B shape

Every measurement runs in a fresh process. "Extra" is the peak beyond what the process held just
before the measured call: weights, gradients and AdamW state for the update (allocated by a
zero-gradient step first), weights for the rollout. On CPU that is resident memory: the peak
(VmHWM, reset through /proc/self/clear_refs) minus VmRSS before the call, with glibc's mmap
threshold fixed at 64 KiB so freed tensors go back to the system; on CUDA,
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. The rollout's KV cache
(computed from the shapes) is reported beside it and subtracted in `extra_beyond_kv_mib`.

* update: 8 rows of a 64-token prompt + up to T response tokens (ragged: T, 15/16 T, ..., 9/16 T,
  so the micro-batch is padded as real ones are), `loss.method=tropd` with the teacher's top-64
  (the heaviest student side: sampled log-prob, log-probs at top-k ids, entropy);
  old = the whole [micro, L, V] logits path this replaced (kept below as `old_student_side`),
  new = `tropd.trainer.update` as it is (64 MiB logits chunks).
* rollout: 64 rows x T new tokens from a 64-token prompt, temperature 1; old = one `generate`
  with `output_logits=True` and the stacked float32 log-softmax, new = `sample_completions`
  (V=152k at T=2,048 is left out on CPU, `SKIPPED_CASES`; T=1,024 there is the target case).
The old path runs only where its estimated peak fits this machine (`--old-limit-gib`); elsewhere
the JSON says "skipped" and why. Targets (issue 13, CPU): update at V=152k, T=2048 <= 1.5 GiB
extra and <= 1.5x the V=4k extra; rollout 64 x 1,024 at V=152k <= 1 GiB beyond the KV cache;
new update throughput >= 0.8x old where old fits, counted in tokens per CPU second of the process
(this machine is shared, so wall time is noisy; both are recorded).

Writes benchmarks/results/student_memory.json (+ .png); quick runs write ..._quick.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MiB = 2**20
VOCABS = {"4k": 4096, "32k": 32768, "152k": 151_936}


@dataclass(frozen=True)
class Case:
    kind: str  # "update" | "rollout"
    path: str  # "old" | "new"
    vocab: int
    tokens: int  # update: response tokens per row; rollout: new tokens per row
    rows: int
    device: str = "cpu"
    compute_dtype: str = "float32"
    checkpointing: bool = False
    prompt: int = 64
    # the random Qwen3's body (Qwen3-1.7B: 2048, 28, 16, 8, 128, 6144)
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    anchor: bool = False  # update: with `loss.anchor_kl`'s frozen start (`--anchor`)

    def old_estimate_bytes(self) -> float:
        """The old path's peak, roughly: ~3.5 float32 [rows, tokens, V] tensors (update: logits,
        log-softmax, exp x log for entropy; rollout: kept logits, their stack, log-softmax)."""
        return 3.5 * self.rows * self.tokens * self.vocab * 4


def random_qwen3(case: Case) -> Any:
    """A random-weight Qwen3 of the case's vocabulary and body, tied head, built on its device."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=case.vocab, hidden_size=case.hidden, num_hidden_layers=case.layers,
        num_attention_heads=case.heads, num_key_value_heads=case.kv_heads,
        head_dim=case.head_dim, intermediate_size=case.intermediate,
        max_position_embeddings=40_960, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(case.device):
        return AutoModelForCausalLM.from_config(config)


# ------------------------------------------------------------------ memory meters (child side)


class Meter:
    """Peak memory of one call beyond what was held just before it."""

    def __init__(self, device: str) -> None:
        self.device = device

    def _status(self, key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def start(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.before = self._status("VmRSS")

    def extra(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        return self._status("VmHWM") - self.before


def old_student_side(reader: Any, mb: Any) -> dict[str, Any]:
    """The update's student side before chunking: the model's whole [B, L, V] logits, gathered
    to [B, T, V], float32 log-softmax, entropy from exp x log (what issue 13 measured)."""
    import torch

    from tropd.trainer.alignment import response_index

    device = reader.device
    logits_B_L_V = reader.model(input_ids=mb.ids_B_L.to(device),
                                attention_mask=mb.attention_B_L.to(device)).logits  # fmt: skip
    idx_B_T, _ = response_index(mb.starts_B.to(device), mb.lengths_B.to(device),
                                mb.response_ids_B_T.shape[1])  # fmt: skip
    index = idx_B_T.unsqueeze(-1).expand(-1, -1, logits_B_L_V.shape[-1])
    logprobs_B_T_V = torch.log_softmax(logits_B_L_V.gather(1, index).float(), dim=-1)
    out = {
        "student_logprobs_B_T": logprobs_B_T_V.gather(
            -1, mb.response_ids_B_T.to(device).unsqueeze(-1)).squeeze(-1),
        "student_entropy_B_T": -(logprobs_B_T_V.exp() * logprobs_B_T_V).sum(-1).detach(),
    }  # fmt: skip
    if mb.teacher_topk_ids_B_T_K is not None:
        out["student_topk_logprobs_B_T_K"] = logprobs_B_T_V.gather(
            -1, mb.teacher_topk_ids_B_T_K.to(device))
    return out


def _update_inputs(case: Case, topk: int = 64) -> tuple[list, list]:
    import numpy as np

    from tropd.teacher.client import ScoredSequence
    from tropd.trainer.batch import TrainSequence

    rng = np.random.default_rng(0)
    sequences, scores = [], []
    prompt = case.prompt
    for i in range(case.rows):
        n = case.tokens - i * case.tokens // 16  # ragged, as rollouts end: T, 15/16 T, ...
        sequences.append(TrainSequence(
            prompt_index=i, context_len=prompt,
            ids=rng.integers(0, case.vocab, prompt + n).astype(np.int64), prefix_len=0,
            behavior_logprobs=-rng.uniform(0.1, 3.0, n).astype(np.float32),
            finish_reason="length",
        ))  # fmt: skip
        top = rng.integers(0, case.vocab, (n, topk)).astype(np.int32)
        top_lp = np.sort(-rng.uniform(0.0, 9.0, (n, topk)), axis=1)[:, ::-1].astype(np.float32)
        teacher = -rng.uniform(0.0, 8.0, n).astype(np.float32)
        scores.append(ScoredSequence(logprobs=teacher, topk_ids=top,
                                     topk_logprobs=np.ascontiguousarray(top_lp)))  # fmt: skip
    return sequences, scores


def measure_update(case: Case, meter: Meter) -> dict[str, Any]:
    import torch

    from tropd.trainer import update
    from tropd.trainer.config import OptimConfig
    from tropd.trainer.losses import LossConfig
    from tropd.trainer.precision import Precision
    from tropd.trainer.setup import enable_checkpointing
    from tropd.trainer.start_anchor import Anchor

    precision = Precision.of(case.compute_dtype, case.device)
    model = random_qwen3(case)
    if case.checkpointing:
        enable_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.1)
    for p in model.parameters():  # allocate gradients and AdamW state before measuring
        p.grad = torch.zeros_like(p)
    optimizer.step()
    sequences, scores = _update_inputs(case)
    if case.path == "old":
        update._student_side = old_student_side  # type: ignore[assignment]
    optim = OptimConfig(micro_batch_size=case.rows)
    loss = LossConfig(method="tropd", topk=64)
    # The frozen start of `loss.anchor_kl` (its weights are held before the call, like the
    # student's; reported as `anchor_weights_mib`).
    anchor = Anchor(random_qwen3(case).requires_grad_(False), 1.0) if case.anchor else None
    # Warm-up: the same update at lr 0 first, so the measured one pays no first-call costs
    # (lazy imports, oneDNN kernels built per shape) and both paths are timed warm.
    lr = optimizer.param_groups[0]["lr"]
    optimizer.param_groups[0]["lr"] = 0.0
    update.apply_update(model, optimizer, sequences, scores, loss, optim,
                        torch.Generator().manual_seed(1), 0, precision=precision,
                        anchor=anchor)  # fmt: skip
    optimizer.param_groups[0]["lr"] = lr
    for p in model.parameters():  # the gradients exist again, as in training
        p.grad = torch.zeros_like(p)
    args = (model, optimizer, sequences, scores, loss, optim, torch.Generator().manual_seed(1), 0)
    meter.start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = update.apply_update(*args, precision=precision, anchor=anchor)
    if case.device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    extra = meter.extra()
    return {"extra_mib": extra / MiB, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "tokens_per_cpu_s": sum(q.response_len for q in sequences) / cpu_seconds,
            "applied": result.applied,
            "anchor_weights_mib": 0.0 if anchor is None else sum(
                p.numel() * p.element_size() for p in anchor.model.parameters()) / MiB,
            }  # fmt: skip


def old_rollout(model: Any, contexts: list[list[int]], new_tokens: int, eos: int) -> Any:
    """One `generate` keeping every step's logits, then the float32 log-softmax of their stack:
    what `sample_completions` did before."""
    import torch

    from tropd.trainer.rollout import _left_pad

    ids_B_L, mask_B_L = _left_pad(contexts, 0)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=ids_B_L.to(device), attention_mask=mask_B_L.to(device),
                             do_sample=True, max_new_tokens=new_tokens, eos_token_id=eos,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True,
                             temperature=1.0, top_k=0, top_p=1.0)  # fmt: skip
        new_B_N = out.sequences[:, ids_B_L.shape[1]:]
        logits_B_N_V = torch.stack(out.logits, dim=1).float()
        logprobs_B_N = torch.log_softmax(logits_B_N_V, dim=-1).gather(-1, new_B_N[..., None])
    return new_B_N, logprobs_B_N


def measure_rollout(case: Case, meter: Meter) -> dict[str, Any]:
    import torch

    from tropd.trainer.precision import Precision
    from tropd.trainer.rollout import sample_completions

    precision = Precision.of(case.compute_dtype, case.device)
    model = random_qwen3(case).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = case.prompt
    contexts = [torch.randint(0, case.vocab, (prompt,), generator=gen).tolist()
                for _ in range(case.rows)]  # fmt: skip
    eos = case.vocab - 1
    torch.manual_seed(0)
    meter.start()
    t0 = time.perf_counter()
    with precision.autocast():
        if case.path == "old":
            new_B_N, _ = old_rollout(model, contexts, case.tokens, eos)
            generated = int(new_B_N.shape[1])
        else:
            completions = sample_completions(model, contexts, 1, case.tokens, [eos], 0,
                                             batch_size=case.rows)  # fmt: skip
            generated = max(c.ids.size for c in completions)
    if case.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    extra = meter.extra()
    config = model.config
    half = precision.compute_dtype != torch.float32
    kv_bytes = (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
                * case.rows * (prompt + generated) * (2 if half else 4))  # fmt: skip
    return {"extra_mib": extra / MiB, "kv_cache_mib": kv_bytes / MiB,
            "extra_beyond_kv_mib": (extra - kv_bytes) / MiB, "seconds": seconds,
            "generated_tokens": generated,
            "tokens_per_s": case.rows * generated / seconds}  # fmt: skip


def child_main(spec: str) -> None:
    case = Case(**json.loads(spec))
    meter = Meter(case.device)
    fn = measure_update if case.kind == "update" else measure_rollout
    print(json.dumps(fn(case, meter)))


# ------------------------------------------------------------------ GPU check


# Dense bf16 tensor-core peak (FLOP/s) by device-name substring, from the vendors' data sheets.
BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def gpu_check(smoke: bool, out: Path | None) -> int:
    """A random Qwen3-1.7B-shaped student (vocabulary 151,936, tied head): one update on
    8 x 4,096 tokens in bf16 autocast with checkpointed layers, then one rollout of 64 rows x
    1,024 new tokens; peak GPU memory, tokens/s and MFU. `smoke`: tiny shapes on CPU."""
    import torch

    if not smoke and not torch.cuda.is_available():
        print("--gpu-check needs CUDA (use --smoke for a CPU rehearsal)", file=sys.stderr)
        return 2
    qwen3_1p7b = {"hidden": 2048, "layers": 28, "heads": 16, "kv_heads": 8, "head_dim": 128,
                  "intermediate": 6144}  # fmt: skip
    common: dict[str, Any] = {"path": "new", "compute_dtype": "bfloat16", "checkpointing": True}
    if smoke:
        update = Case("update", vocab=4096, tokens=64, rows=2, **common)
        rollout = Case("rollout", vocab=4096, tokens=16, rows=4, **common)
    else:
        common.update(device="cuda", vocab=VOCABS["152k"], **qwen3_1p7b)
        update = Case("update", tokens=4096 - 64, rows=8, **common)  # 8 x 4,096 with the prompt
        rollout = Case("rollout", tokens=1024, rows=64, **common)
    name = "cpu (smoke)" if smoke else torch.cuda.get_device_name()
    report: dict[str, Any] = {"benchmark": "student_memory --gpu-check", "device": name,
                              "torch": torch.__version__, "update_case": asdict(update),
                              "rollout_case": asdict(rollout)}  # fmt: skip
    meter = Meter(update.device)
    row = measure_update(update, meter)
    if update.device == "cuda":
        row["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    row.update(_model_flops_utilisation(update, row["seconds"], name))
    report["update"] = row
    if update.device == "cuda":
        torch.cuda.empty_cache()
    report["rollout"] = measure_rollout(rollout, meter)
    if rollout.device == "cuda":
        report["rollout"]["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None or not smoke:
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
        path = out or RESULTS / f"student_gpu_{slug}.json"
        path.write_text(text + "\n")
        print(f"wrote {path}")
    return 0


def _model_flops_utilisation(case: Case, seconds: float, device_name: str) -> dict[str, Any]:
    """6 N per token (forward + backward) plus the recompute (checkpointed layers: the body's
    forward again; logits chunks: the output layer's forward again), attention included."""
    seq = case.prompt + case.tokens
    d, ff = case.hidden, case.intermediate
    attn_proj = d * case.heads * case.head_dim * 2 + d * case.kv_heads * case.head_dim * 2
    body = case.layers * (attn_proj + 3 * d * ff)  # matmul weights per token
    head = case.vocab * d
    # QK^T and AV: 2 x 2 FLOPs per multiply-add x seq/2 keys on average (causal)
    attention = case.layers * 2 * seq * case.heads * case.head_dim
    forward = 2 * (body + head) + attention
    recompute = (2 * body + attention if case.checkpointing else 0) + 2 * head
    per_token = 3 * forward + recompute
    flops = per_token * case.rows * seq
    peak = next((v for k, v in BF16_PEAK.items() if k in device_name), None)
    return {"model_flops": flops, "tokens_per_s": case.rows * case.tokens / seconds,
            "bf16_peak_flops": peak, "mfu": flops / seconds / peak if peak else None}  # fmt: skip


# ------------------------------------------------------------------ parent side


def run_case(case: Case, old_limit_gib: float, timeout_s: float) -> dict[str, Any]:
    row: dict[str, Any] = asdict(case)
    if (case.kind, case.vocab, case.tokens) in SKIPPED_CASES:
        row["skipped"] = SKIPPED_CASES[case.kind, case.vocab, case.tokens]
        return row
    if case.path == "old" and case.old_estimate_bytes() > old_limit_gib * 2**30:
        row["skipped"] = (f"old path estimated at {case.old_estimate_bytes() / 2**30:.1f} GiB "
                          f"> --old-limit-gib {old_limit_gib} on this machine")  # fmt: skip
        print(f"  {case.kind:7s} {case.path} V={case.vocab} T={case.tokens}: skipped", flush=True)
        return row
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env, timeout=timeout_s)  # fmt: skip
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        print(f"  {case.kind:7s} {case.path} V={case.vocab} T={case.tokens}: {row['error']}")
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"  {case.kind:7s} {case.path} V={case.vocab:6d} T={case.tokens:4d}: "
          f"{row['extra_mib']:8.0f} MiB extra, {row['seconds']:6.1f} s", flush=True)  # fmt: skip
    return row


# The rollout at V=152k and 2,048 new tokens is left out of the full grid: on a shared 2-core
# CPU, generate's sampling (torch.multinomial: 64 x 152k exponentials per step, ~0.4 s) makes it
# ~30 minutes, and the new path's extra memory does not grow with T (V=4k, 32k at 512 vs 2048).
SKIPPED_CASES = {("rollout", VOCABS["152k"], 2048): "CPU time of generate's sampling (~30 min)"}


def cases(quick: bool) -> list[Case]:
    if quick:
        kinds = (("update", 2), ("rollout", 4))
        return [Case(kind, path, 4096, 64, rows) for kind, rows in kinds for path in ("old", "new")]
    out = []
    for tokens in (512, 2048):
        for vocab in VOCABS.values():
            for path in ("old", "new"):
                out.append(Case("update", path, vocab, tokens, rows=8))
    for tokens in (512, 1024, 2048):
        for vocab in VOCABS.values():
            if tokens == 1024 and vocab != VOCABS["152k"]:
                continue  # 1,024 is the target case only
            for path in ("old", "new"):
                out.append(Case("rollout", path, vocab, tokens, rows=64))
    return out


def _find(rows: list[dict], **keys: Any) -> dict | None:
    for row in rows:
        if all(row.get(k) == v for k, v in keys.items()) and "extra_mib" in row:
            return row
    return None


def targets(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    big = _find(rows, kind="update", path="new", vocab=VOCABS["152k"], tokens=2048)
    small = _find(rows, kind="update", path="new", vocab=VOCABS["4k"], tokens=2048)
    if big and small:
        out["update_152k_T2048_extra_gib"] = big["extra_mib"] / 1024
        out["update_152k_T2048_extra_le_1.5_gib"] = big["extra_mib"] <= 1.5 * 1024
        out["update_extra_ratio_152k_over_4k"] = big["extra_mib"] / small["extra_mib"]
        out["update_extra_ratio_le_1.5"] = big["extra_mib"] / small["extra_mib"] <= 1.5
    roll = _find(rows, kind="rollout", path="new", vocab=VOCABS["152k"], tokens=1024)
    if roll:
        out["rollout_64x1024_152k_beyond_kv_gib"] = roll["extra_beyond_kv_mib"] / 1024
        out["rollout_64x1024_152k_beyond_kv_le_1_gib"] = roll["extra_beyond_kv_mib"] <= 1024
    speed = {}
    for row in rows:
        if row["kind"] == "update" and row["path"] == "new" and "extra_mib" in row:
            old = _find(rows, kind="update", path="old", vocab=row["vocab"], tokens=row["tokens"])
            if old:
                ratio = row["tokens_per_cpu_s"] / old["tokens_per_cpu_s"]
                speed[f"V={row['vocab']},T={row['tokens']}"] = ratio
    if speed:
        out["update_throughput_new_over_old"] = speed
        out["update_throughput_ge_0.8x"] = min(speed.values()) >= 0.8
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("update", "rollout"), strict=True):
        groups = sorted({(r["tokens"], r["vocab"]) for r in rows if r["kind"] == kind})
        for offset, path_name, color in ((-0.2, "old", "tab:red"), (0.2, "new", "tab:blue")):
            xs, ys = [], []
            for x, (tokens, vocab) in enumerate(groups):
                row = _find(rows, kind=kind, path=path_name, vocab=vocab, tokens=tokens)
                if row:
                    xs.append(x + offset)
                    ys.append(row["extra_mib"])
            ax.bar(xs, ys, width=0.4, color=color, label=f"{path_name} path")
        ax.set_xticks(range(len(groups)))
        names = {v: k for k, v in VOCABS.items()}
        ax.set_xticklabels([f"T={t}\nV={names.get(v, v)}" for t, v in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("peak extra memory (MiB, log)")
        rows_n = next(r["rows"] for r in rows if r["kind"] == kind)
        ax.set_title(f"one {kind} ({rows_n} rows); missing red bar = old path does not fit")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def anchor_cost(quick: bool, out: Path, timeout_s: float) -> None:
    """The KL anchor's price (`loss.anchor_kl`): one update with and without its frozen start,
    side by side in fresh processes, at Qwen3's vocabulary (V=4k, 64 tokens when quick)."""
    shapes = [(4096, 64)] if quick else [(VOCABS["152k"], 512), (VOCABS["152k"], 2048)]
    rows = []
    for vocab, tokens in shapes:
        off, on = (run_case(Case("update", "new", vocab, tokens, rows=2 if quick else 8,
                                 anchor=anchor), 0.0, timeout_s)
                   for anchor in (False, True))  # fmt: skip
        ratios = {key: on[key] / off[key] for key in ("extra_mib", "cpu_seconds")
                  if key in on and key in off and off[key]}  # fmt: skip
        rows.append({"vocab": vocab, "tokens": tokens, "off": off, "on": on, "on_over_off": ratios})
        print(f"  V={vocab} T={tokens}: anchor on / off = "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
              + f"; the frozen start holds {on.get('anchor_weights_mib', 0):.0f} MiB of weights")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "anchor_cost", "command": "python " + " ".join(
        sys.argv), "device": "cpu", "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: V=4k, 64 tokens")
    p.add_argument("--old-limit-gib", type=float, default=5.0,
                   help="run the old path only where its estimated peak is below this")
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--gpu-check", action="store_true",
                   help="Qwen3-1.7B-shaped student on CUDA: one update, one rollout, MFU")
    p.add_argument("--smoke", action="store_true", help="with --gpu-check: tiny shapes on CPU")
    p.add_argument("--anchor", action="store_true",
                   help="the cost of loss.anchor_kl: one update with and without the frozen start")
    args = p.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.gpu_check:
        sys.exit(gpu_check(args.smoke, args.out))
    if args.anchor:
        anchor_cost(args.quick, args.out or RESULTS / "anchor_cost.json", args.timeout_s)
        return
    import torch

    name = "student_memory_quick" if args.quick else "student_memory"
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "student_memory",
        "command": "python " + " ".join(sys.argv),
        "device": "cpu",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "method": "peak RSS (VmHWM after clear_refs) minus RSS before the call, "
                  "MALLOC_MMAP_THRESHOLD_=65536, one fresh process per case; throughput in "
                  "tokens per CPU second of the process (the machine is shared)",
        "model": "random Qwen3: hidden 64, 2 layers, 4 heads (2 KV, head_dim 16), MLP 128, tied",
        "targets": {},
        "cases": [],
    }  # fmt: skip
    print(f"student memory ({'quick' if args.quick else 'full'}), one process per case:")
    for case in cases(args.quick):
        report["cases"].append(run_case(case, args.old_limit_gib, args.timeout_s))
        report["targets"] = targets(report["cases"])
        out.write_text(json.dumps(report, indent=2) + "\n")  # a run cut short keeps its cases
    plot(report["cases"], out.with_suffix(".png"))
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")

if __name__ == "__main__":
    main()
