"""Every loss against a naive per-token reference written here: values, gradients, dtypes, ragged
and all-masked batches, garbage in unread slots, and micro-batch accumulation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputs,
    entropy_top_threshold,
    merge_metrics,
)

V, K = 13, 5
FLOAT_FIELDS = [
    f.name
    for f in dataclasses.fields(LossInputs)
    if f.name.endswith(("_B_T", "_B_T_K")) and "mask" not in f.name and "ids" not in f.name
]
CASES = [
    ("opd", "topk_fkl", False),
    ("clip", "topk_fkl", False),
    ("mask", "topk_fkl", False),
    ("fkl_topk", "topk_fkl", False),
    ("jsd", "topk_fkl", False),
    ("eopd", "topk_fkl", False),
    ("entropy_top20", "topk_fkl", False),
    ("sft", "topk_fkl", False),
    ("tropd", "topk_fkl", False),
    ("tropd", "topk_fkl", True),
    ("tropd", "topk_fkl_reward", True),
    ("tropd", "mask", False),
    ("tropd", "clip", True),
]
CASE_IDS = [f"{m}-{o}-{'w' if w else 'nw'}" if m == "tropd" else m for m, o, w in CASES]


@dataclass
class Batch:
    logits_B_T_V: Tensor  # the student's logits: the leaf every gradient is compared on
    inputs: LossInputs


def make_batch(
    seed: int,
    rows: int = 4,
    positions: int = 9,
    dtype: torch.dtype = torch.float32,
    weights: bool = False,
) -> Batch:
    """A ragged batch from real distributions: tokens sampled from the student, a sharper teacher.

    Row b: a guidance prefix of 0-2 tokens, then 0..rest response tokens, then padding.
    Padding slots hold whatever the distributions say (the garbage test overwrites them).
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, positions, V, generator=gen).requires_grad_()
    student_V = torch.log_softmax(logits, dim=-1)
    teacher_V = torch.log_softmax(3.0 * torch.randn(rows, positions, V, generator=gen), dim=-1)
    ids_B_T = torch.multinomial(student_V.detach().exp().reshape(-1, V), 1, generator=gen)
    ids_B_T = ids_B_T.reshape(rows, positions)
    topk_lp, topk_ids = teacher_V.topk(K, dim=-1)
    # Some teachers give zero mass to candidates (padding K past the vocabulary): -inf.
    absent = torch.rand(rows, positions, generator=gen) < 0.2
    topk_lp[..., -1] = torch.where(absent, float("-inf"), topk_lp[..., -1])
    prefix = torch.zeros(rows, positions, dtype=torch.bool)
    response = torch.zeros(rows, positions, dtype=torch.bool)
    for b in range(rows):
        start = int(torch.randint(0, 3, (1,), generator=gen))
        length = int(torch.randint(0, positions - start + 1, (1,), generator=gen))
        prefix[b, :start] = True
        response[b, start : positions if b == 0 else start + length] = True  # row 0 full
    weight_B_T = torch.rand(rows, positions, generator=gen).to(dtype)
    inputs = LossInputs(
        student_logprobs_B_T=student_V.gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        behavior_logprobs_B_T=student_V.detach().gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        teacher_logprobs_B_T=teacher_V.gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        teacher_topk_ids_B_T_K=topk_ids,
        teacher_topk_logprobs_B_T_K=topk_lp.to(dtype),
        student_topk_logprobs_B_T_K=student_V.gather(-1, topk_ids).to(dtype),
        teacher_entropy_B_T=_entropy(teacher_V).to(dtype),
        student_entropy_B_T=_entropy(student_V.detach()).to(dtype),
        trust_uniform_B_T=torch.rand(rows, positions, generator=gen),
        response_mask_B_T=response,
        prefix_mask_B_T=prefix,
        outlier_weight_B_T=weight_B_T if weights else None,
    )
    return Batch(logits, inputs)


def _entropy(logprobs_B_T_V: Tensor) -> Tensor:
    return -(logprobs_B_T_V.exp() * logprobs_B_T_V).sum(-1)


# ----------------------------------------------------------------------------- the reference


def _f(x: Tensor) -> float:
    return float(x.double())


def ref_fkl(inp: LossInputs, b: int, t: int, detach: bool = False) -> Tensor:
    teacher = [_f(v) for v in inp.teacher_topk_logprobs_B_T_K[b, t]]
    valid = [k for k in range(len(teacher)) if teacher[k] != -math.inf]
    lse = math.log(sum(math.exp(teacher[k]) for k in valid))
    out = torch.zeros((), dtype=torch.float64)
    for k in valid:
        student = inp.student_topk_logprobs_B_T_K[b, t, k].double()
        student = student.detach() if detach else student
        out = out + math.exp(teacher[k] - lse) * ((teacher[k] - lse) - student)
    return out


def ref_jsd(inp: LossInputs, b: int, t: int, beta: float) -> Tensor:
    teacher = [_f(v) for v in inp.teacher_topk_logprobs_B_T_K[b, t]]
    valid = [k for k in range(len(teacher)) if teacher[k] != -math.inf]
    lse = math.log(sum(math.exp(teacher[k]) for k in valid))
    teacher_side = torch.zeros((), dtype=torch.float64)
    for k in valid:
        p = math.exp(teacher[k] - lse)
        student_p = inp.student_topk_logprobs_B_T_K[b, t, k].double().exp()
        teacher_side = teacher_side + p * (
            math.log(p) - torch.log(beta * p + (1 - beta) * student_p)
        )
    pi_s = math.exp(_f(inp.behavior_logprobs_B_T[b, t]))
    m = beta * math.exp(_f(inp.teacher_logprobs_B_T[b, t])) + (1 - beta) * pi_s
    advantage = math.log(pi_s / m) - (1 - beta) * pi_s / m
    student = inp.student_logprobs_B_T[b, t].double()
    return beta * teacher_side + (1 - beta) * advantage * student


def ref_selected(inp: LossInputs, fraction: float) -> set[tuple[int, int]]:
    """Top `fraction` of response tokens by student entropy (ties at the cut all selected)."""
    resp = inp.response_mask_B_T
    tokens = [(b, t) for b in range(resp.shape[0]) for t in range(resp.shape[1]) if resp[b, t]]
    if not tokens:
        return set()
    ranked = sorted((_f(inp.student_entropy_B_T[b, t]) for b, t in tokens), reverse=True)
    cut = ranked[max(1, math.ceil(fraction * len(tokens) - 1e-9)) - 1]
    if inp.student_entropy_threshold is not None:
        cut = inp.student_entropy_threshold
    return {(b, t) for b, t in tokens if float(inp.student_entropy_B_T[b, t].float()) >= cut}


def ref_token(inp: LossInputs, cfg: LossConfig, b: int, t: int, selected) -> Tensor:
    student = inp.student_logprobs_B_T[b, t].double()
    if cfg.method == "sft":
        return -student
    if cfg.method == "fkl_topk":
        return ref_fkl(inp, b, t)
    if cfg.method == "jsd":
        return ref_jsd(inp, b, t, cfg.jsd_beta)
    r = _f(inp.teacher_logprobs_B_T[b, t]) - _f(inp.behavior_logprobs_B_T[b, t])
    if cfg.method == "opd":
        return -r * student
    if cfg.method == "clip":
        return -max(r, cfg.tau) * student
    if cfg.method == "mask":
        return -r * student if r >= cfg.tau else 0.0 * student
    if cfg.method == "entropy_top20":
        return -r * student if (b, t) in selected else 0.0 * student
    if cfg.method == "eopd":
        high = _f(inp.teacher_entropy_B_T[b, t]) > cfg.eopd_entropy_threshold
        return -r * student + (ref_fkl(inp, b, t) if high else 0.0)
    assert cfg.method == "tropd"
    if float(inp.trust_uniform_B_T[b, t]) < min(1.0, math.exp(r)):
        return -r * student
    w = 1.0 if inp.outlier_weight_B_T is None else _f(inp.outlier_weight_B_T[b, t])
    if cfg.outlier == "topk_fkl":
        return w * ref_fkl(inp, b, t)
    if cfg.outlier == "topk_fkl_reward":
        return w * ref_fkl(inp, b, t, detach=True) * student
    if cfg.outlier == "clip":
        return -w * max(r, cfg.tau) * student
    return 0.0 * student


def ref_loss(inp: LossInputs, cfg: LossConfig, normalizer: float) -> Tensor:
    """Naive: a Python loop over every position, float64, one token at a time."""
    selected = (
        ref_selected(inp, cfg.entropy_top_fraction) if cfg.method == "entropy_top20" else None
    )
    total = torch.zeros((), dtype=torch.float64)
    rows, positions = inp.response_mask_B_T.shape
    for b in range(rows):
        for t in range(positions):
            if inp.prefix_mask_B_T[b, t]:
                total = total - cfg.beta_guidance * inp.student_logprobs_B_T[b, t].double()
            if inp.response_mask_B_T[b, t]:
                total = total + ref_token(inp, cfg, b, t, selected)
    return total / max(normalizer, 1.0)


# ----------------------------------------------------------------------------- the tests


def _cfg(method: str, outlier: str) -> LossConfig:
    # tau = -1 and a 0.5-nat entropy cut make every branch occur in these small batches.
    return LossConfig(
        method=method, outlier=outlier, outlier_weighting="none", tau=-1.0, beta_guidance=0.1
    )


def _grad(loss: Tensor, leaf: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("method", "outlier", "weights"), CASES, ids=CASE_IDS)
def test_matches_reference(method: str, outlier: str, weights: bool, dtype: torch.dtype) -> None:
    cfg = _cfg(method, outlier)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    for seed in range(3):
        batch = make_batch(seed, dtype=dtype, weights=weights)
        own = batch.inputs.response_mask_B_T.sum() + batch.inputs.prefix_B_T.sum()
        normalizer = float(own) + 3.0  # other micro-batches
        loss, metrics = LOSSES[method](batch.inputs, cfg, normalizer)
        expected = ref_loss(batch.inputs, cfg, normalizer)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
        assert metrics["loss_total"] == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
        torch.testing.assert_close(
            _grad(loss, batch.logits_B_T_V).double(),
            _grad(expected, batch.logits_B_T_V).double(),
            **tol,
        )


@pytest.mark.parametrize(("method", "outlier", "weights"), CASES, ids=CASE_IDS)
def test_all_masked_gives_zero_and_finite_grads(method: str, outlier: str, weights: bool) -> None:
    batch = make_batch(0, weights=weights)
    empty = torch.zeros_like(batch.inputs.response_mask_B_T)
    inputs = dataclasses.replace(batch.inputs, response_mask_B_T=empty, prefix_mask_B_T=empty)
    assert int(inputs.response_mask_B_T.sum() + inputs.prefix_B_T.sum()) == 0
    for normalizer in (0.0, 7.0):
        loss, metrics = LOSSES[method](inputs, _cfg(method, outlier), normalizer)
        assert loss.item() == 0.0
        grad = _grad(loss, batch.logits_B_T_V)
        assert torch.isfinite(grad).all() and not grad.any()
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["trained_tokens"] == 0


def _with_garbage(inputs: LossInputs) -> LossInputs:
    """Every float field turned into a fresh leaf holding nan/+inf/-inf wherever it is unread."""
    read_B_T = inputs.response_mask_B_T | inputs.prefix_mask_B_T
    changes = {}
    for name in FLOAT_FIELDS:
        value = getattr(inputs, name)
        if value is None:
            continue
        read = read_B_T if name == "student_logprobs_B_T" else inputs.response_mask_B_T
        read = read.unsqueeze(-1).expand(value.shape) if value.dim() == 3 else read
        garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=value.dtype)
        garbage = garbage[torch.arange(value.numel()) % 3].reshape(value.shape)
        mixed = torch.where(read, value.detach(), garbage)
        changes[name] = mixed.requires_grad_() if value.requires_grad else mixed
    return dataclasses.replace(inputs, **changes)


@pytest.mark.parametrize(("method", "outlier", "weights"), CASES, ids=CASE_IDS)
def test_garbage_in_unread_slots_does_not_leak(method: str, outlier: str, weights: bool) -> None:
    cfg = _cfg(method, outlier)
    batch = make_batch(1, weights=weights)
    dirty = _with_garbage(batch.inputs)
    originals = {name: getattr(batch.inputs, name) for name in FLOAT_FIELDS}
    clean = dataclasses.replace(
        dirty, **{name: value.detach() for name, value in originals.items() if value is not None}
    )
    normalizer = float(dirty.response_mask_B_T.sum() + dirty.prefix_B_T.sum())
    loss, metrics = LOSSES[method](dirty, cfg, normalizer)
    clean_loss, clean_metrics = LOSSES[method](clean, cfg, normalizer)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(clean_loss.item(), rel=1e-6)
    assert metrics == pytest.approx(clean_metrics, rel=1e-6, nan_ok=True)
    for name in ("student_logprobs_B_T", "student_topk_logprobs_B_T_K"):
        grad = _grad(loss, getattr(dirty, name))
        assert torch.isfinite(grad).all(), name
        unread = ~dirty.response_mask_B_T
        if name == "student_logprobs_B_T":
            unread &= ~dirty.prefix_mask_B_T
        assert not grad[unread].any(), name


def _rows(inputs: LossInputs, rows: slice, threshold: float | None) -> LossInputs:
    changes = {
        f.name: getattr(inputs, f.name)[rows]
        for f in dataclasses.fields(inputs)
        if isinstance(getattr(inputs, f.name), Tensor)
    }
    return dataclasses.replace(inputs, **changes, student_entropy_threshold=threshold)


@pytest.mark.parametrize(("method", "outlier", "weights"), CASES, ids=CASE_IDS)
def test_one_or_four_micro_batches_give_the_same_gradient(
    method: str, outlier: str, weights: bool
) -> None:
    cfg = _cfg(method, outlier)
    batch = make_batch(2, rows=8, weights=weights)
    parts = [slice(i, i + 2) for i in range(0, 8, 2)]
    resp = batch.inputs.response_mask_B_T
    threshold = entropy_top_threshold(
        [batch.inputs.student_entropy_B_T[p] for p in parts],
        [resp[p] for p in parts],
        cfg.entropy_top_fraction,
    )
    whole = _rows(batch.inputs, slice(None), threshold)
    micro = [_rows(batch.inputs, p, threshold) for p in parts]
    normalizer = float(sum(int(m.response_mask_B_T.sum() + m.prefix_B_T.sum()) for m in micro))
    assert normalizer == int(whole.response_mask_B_T.sum() + whole.prefix_B_T.sum())
    loss, metrics = LOSSES[method](whole, cfg, normalizer)
    results = [LOSSES[method](m, cfg, normalizer) for m in micro]
    summed = torch.stack([r[0] for r in results]).sum()
    torch.testing.assert_close(summed, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        _grad(summed, batch.logits_B_T_V), _grad(loss, batch.logits_B_T_V), rtol=1e-5, atol=1e-7
    )
    assert merge_metrics(r[1] for r in results) == pytest.approx(metrics, rel=1e-5, abs=1e-6)
