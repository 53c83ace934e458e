"""TrOPD's outlier weightings (issue 8): each rule against a naive per-token loop written here over
ragged batches with garbage in unread slots, hand-computed cases, the weight's stop-gradient, the
weighted TrOPD loss against a naive reference with gradients, metrics, registry and config."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputError,
    LossInputs,
    merge_metrics,
    needs_topk,
    outlier_rule_weights,
    unmet_teacher_needs,
)
from tropd.trainer.losses.outlier_weights import (
    accumulated_surprise,
    earlier_sum,
    prefix_gate_weights,
    support_weights,
    surprise_weights,
)

V, K = 11, 4
LOG = math.log
RULES = ["surprise", "support", "prefix_gate"]
FLOAT_FIELDS = [
    f.name
    for f in dataclasses.fields(LossInputs)
    if f.name.endswith(("_B_T", "_B_T_K")) and "mask" not in f.name and "ids" not in f.name
]


@dataclass
class Batch:
    logits_B_T_V: Tensor  # the student's logits: the leaf every gradient is compared on
    inputs: LossInputs


def make_batch(
    seed: int,
    rows: int = 5,
    positions: int = 10,
    dtype: torch.dtype = torch.float32,
    weights: bool = False,
) -> Batch:
    """A ragged batch: tokens sampled from the student, a sharp teacher that often disagrees.

    Row b: a guidance prefix of 0-2 tokens, response tokens, then padding; row 0 is all response,
    row 1 has no response, and the other rows may have an unread hole inside their response (a
    slot that must not count, whatever it holds).
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, positions, V, generator=gen).requires_grad_()
    student_V = torch.log_softmax(logits, dim=-1)
    teacher_V = torch.log_softmax(4.0 * torch.randn(rows, positions, V, generator=gen), dim=-1)
    ids_B_T = torch.multinomial(student_V.detach().exp().reshape(-1, V), 1, generator=gen)
    ids_B_T = ids_B_T.reshape(rows, positions)
    topk_lp, topk_ids = teacher_V.topk(K, dim=-1)
    absent = torch.rand(rows, positions, generator=gen) < 0.2
    topk_lp[..., -1] = torch.where(absent, float("-inf"), topk_lp[..., -1])
    prefix = torch.zeros(rows, positions, dtype=torch.bool)
    response = torch.zeros(rows, positions, dtype=torch.bool)
    for b in range(rows):
        start = 0 if b == 0 else int(torch.randint(0, 3, (1,), generator=gen))
        end = positions if b == 0 else int(torch.randint(start, positions + 1, (1,), generator=gen))
        prefix[b, :start] = True
        response[b, start : start if b == 1 else end] = True
        if b >= 2 and end - start >= 3:
            response[b, int(torch.randint(start + 1, end - 1, (1,), generator=gen))] = False
    weight_B_T = torch.rand(rows, positions, generator=gen).to(dtype)
    inputs = LossInputs(
        student_logprobs_B_T=student_V.gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        behavior_logprobs_B_T=student_V.detach().gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        teacher_logprobs_B_T=teacher_V.gather(-1, ids_B_T[..., None])[..., 0].to(dtype),
        teacher_topk_ids_B_T_K=topk_ids,
        teacher_topk_logprobs_B_T_K=topk_lp.to(dtype),
        student_topk_logprobs_B_T_K=student_V.gather(-1, topk_ids).to(dtype),
        trust_uniform_B_T=torch.rand(rows, positions, generator=gen),
        response_mask_B_T=response,
        prefix_mask_B_T=prefix,
        outlier_weight_B_T=weight_B_T if weights else None,
    )
    return Batch(logits, inputs)


def with_garbage(inputs: LossInputs) -> LossInputs:
    """Every float field as a fresh leaf holding nan/+inf/-inf wherever no loss reads it: teacher
    log-probs are read on response and prefix tokens (the running rules), student log-probs
    too (guidance), everything else on response tokens only."""
    read_B_T = inputs.response_mask_B_T | inputs.prefix_B_T
    changes = {}
    for name in FLOAT_FIELDS:
        value = getattr(inputs, name)
        if value is None:
            continue
        both = name in ("student_logprobs_B_T", "teacher_logprobs_B_T")
        read = read_B_T if both else inputs.response_mask_B_T
        read = read.unsqueeze(-1).expand(value.shape) if value.dim() == 3 else read
        garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=value.dtype)
        garbage = garbage[torch.arange(value.numel()) % 3].reshape(value.shape)
        mixed = torch.where(read, value.detach(), garbage)
        changes[name] = mixed.requires_grad_() if value.requires_grad else mixed
    return dataclasses.replace(inputs, **changes)


# ----------------------------------------------------------------------------- the reference


def _f(x: Tensor) -> float:
    return float(x.detach().double())


def _earlier(inp: LossInputs, b: int, t: int) -> list[float]:
    """lp_T of the row's response and prefix tokens before t (padding and holes skipped)."""
    read = inp.response_mask_B_T | inp.prefix_B_T
    return [_f(inp.teacher_logprobs_B_T[b, j]) for j in range(t) if read[b, j]]


def ref_weight(inp: LossInputs, cfg: LossConfig, b: int, t: int) -> float:
    """The rule's w_t at one response token, one token at a time in float64."""
    if cfg.outlier_weighting == "surprise":
        surprise = sum(max(0.0, -lp - cfg.surprise_c) for lp in _earlier(inp, b, t))
        return math.exp(-surprise / cfg.surprise_s0)
    if cfg.outlier_weighting == "support":
        student = _f(inp.student_topk_logprobs_B_T_K[b, t, 0])
        teacher = _f(inp.teacher_topk_logprobs_B_T_K[b, t, 0])
        return min(1.0, math.exp(student) / math.exp(teacher))
    if cfg.outlier_weighting == "prefix_gate":
        gated = any(lp < cfg.prefix_gate_threshold for lp in _earlier(inp, b, t))
        return 0.0 if gated else 1.0
    return 1.0


def ref_weights(inp: LossInputs, cfg: LossConfig) -> Tensor:
    rows, positions = inp.response_mask_B_T.shape
    out = torch.zeros(rows, positions, dtype=torch.float64)
    for b in range(rows):
        for t in range(positions):
            if inp.response_mask_B_T[b, t]:
                out[b, t] = ref_weight(inp, cfg, b, t)
    return out


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


def ref_loss(inp: LossInputs, cfg: LossConfig, normalizer: float) -> tuple[Tensor, list[float]]:
    """`sum_t M_t*OPD_t + (1 - M_t)*w_t*outlier_t` (+ guidance) / normalizer, token by token.

    Returns the loss and the w_t of every outlier token (for the `outlier_weight` metric).
    """
    total = torch.zeros((), dtype=torch.float64)
    outlier_weights: list[float] = []
    rows, positions = inp.response_mask_B_T.shape
    for b in range(rows):
        for t in range(positions):
            student = inp.student_logprobs_B_T[b, t].double()
            if inp.prefix_B_T[b, t]:
                total = total - cfg.beta_guidance * student
            if not inp.response_mask_B_T[b, t]:
                continue
            r = _f(inp.teacher_logprobs_B_T[b, t]) - _f(inp.behavior_logprobs_B_T[b, t])
            if float(inp.trust_uniform_B_T[b, t]) < min(1.0, math.exp(r)):
                total = total - r * student
                continue
            w = ref_weight(inp, cfg, b, t)
            if inp.outlier_weight_B_T is not None:
                w *= _f(inp.outlier_weight_B_T[b, t])
            outlier_weights.append(w)
            if cfg.outlier == "topk_fkl":
                total = total + w * ref_fkl(inp, b, t)
            elif cfg.outlier == "topk_fkl_reward":
                total = total + w * ref_fkl(inp, b, t, detach=True) * student
            elif cfg.outlier == "clip":
                total = total - w * max(r, cfg.tau) * student
    return total / max(normalizer, 1.0), outlier_weights


def _grad(loss: Tensor, leaf: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


CONFIGS = [
    LossConfig(outlier_weighting="surprise"),
    LossConfig(outlier_weighting="surprise", surprise_c=0.5, surprise_s0=1.5),
    LossConfig(outlier_weighting="support"),
    LossConfig(outlier_weighting="prefix_gate"),
    LossConfig(outlier_weighting="prefix_gate", prefix_gate_threshold=-2.0),
]
CONFIG_IDS = ["surprise", "surprise-c0.5-s1.5", "support", "prefix_gate", "prefix_gate-2"]


# ----------------------------------------------------------------------------- the weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_rule_matches_the_per_token_loop(cfg: LossConfig, dtype: torch.dtype) -> None:
    spread = []
    for seed in range(4):
        inputs = make_batch(seed, dtype=dtype).inputs
        weights = outlier_rule_weights(inputs, cfg)
        assert weights is not None and weights.dtype == torch.float32
        assert not weights.requires_grad
        torch.testing.assert_close(weights.double(), ref_weights(inputs, cfg), rtol=1e-5, atol=1e-6)
        spread.append(weights[inputs.response_mask_B_T])
    spread_T = torch.cat(spread)
    # The batches exercise the rule: some tokens (nearly) trusted, some discounted.
    assert (spread_T > 0.75).any() and (spread_T < 0.25).any()


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_garbage_in_unread_slots_reaches_no_weight(cfg: LossConfig) -> None:
    for seed in range(4):
        inputs = make_batch(seed).inputs
        dirty = with_garbage(inputs)
        weights = outlier_rule_weights(dirty, cfg)
        assert weights is not None and torch.isfinite(weights).all()
        assert ((weights >= 0.0) & (weights <= 1.0)).all()
        assert not weights[~dirty.response_mask_B_T].any()
        torch.testing.assert_close(weights, outlier_rule_weights(inputs, cfg), rtol=0, atol=0)


def test_surprise_by_hand_across_ragged_rows() -> None:
    """c = 2, s0 = 4. Row 0: prefix lp -6 (excess 4), then -1, -5 (3), hole, -3 (1), -0.5.
    Row 1: -9 (7) then padding. Row 2: no tokens at all."""
    nan, inf = math.nan, math.inf
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(3, 6),
        teacher_logprobs_B_T=torch.tensor(
            [[-6.0, -1.0, -5.0, nan, -3.0, -0.5], [-9.0, -inf, nan, inf, -1.0, -1.0], [nan] * 6]
        ),
        response_mask_B_T=torch.tensor(
            [[False, True, True, False, True, True], [True] + [False] * 5, [False] * 6]
        ),
        prefix_mask_B_T=torch.tensor([[True] + [False] * 5, [False] * 6, [False] * 6]),
    )
    surprise = accumulated_surprise(inputs, c=2.0)
    torch.testing.assert_close(
        surprise,
        torch.tensor([[0.0, 4.0, 4.0, 7.0, 7.0, 8.0], [0.0, 7.0, 7.0, 7.0, 7.0, 7.0], [0.0] * 6]),
    )
    weights = surprise_weights(inputs, c=2.0, s0=4.0)
    e = math.exp
    expected = [[0.0, e(-1.0), e(-1.0), 0.0, e(-7 / 4), e(-2.0)], [1.0] + [0.0] * 5, [0.0] * 6]
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_zero_teacher_mass_is_infinite_surprise_and_closes_the_gate() -> None:
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(1, 4),
        teacher_logprobs_B_T=torch.tensor([[-0.1, -math.inf, -0.1, -0.1]]),
        response_mask_B_T=torch.ones(1, 4, dtype=torch.bool),
    )
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # t = 1 itself is not judged by its own lp
    torch.testing.assert_close(surprise_weights(inputs, c=2.0, s0=4.0), expected)
    torch.testing.assert_close(prefix_gate_weights(inputs, threshold=-5.0), expected)


def test_prefix_gate_by_hand() -> None:
    """The gate closes strictly below the threshold, on prefix tokens too, and stays closed."""
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(2, 5),
        teacher_logprobs_B_T=torch.tensor(
            [[-5.0, -1.0, -5.01, -0.1, -0.1], [-7.0, -0.1, -0.1, math.nan, math.nan]]
        ),
        response_mask_B_T=torch.tensor([[True] * 5, [False, True, True, False, False]]),
        prefix_mask_B_T=torch.tensor([[False] * 5, [True, False, False, False, False]]),
    )
    weights = prefix_gate_weights(inputs, threshold=-5.0)
    torch.testing.assert_close(
        weights, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    )


def test_support_by_hand() -> None:
    """pi_T(y*) = 0.8: a student at 0.4 gets 0.5, one at 0.9 gets 1, zero student mass gets 0."""
    teacher = [[[LOG(0.8), LOG(0.1)]] * 3 + [[math.nan, math.nan]]]
    student = [[[LOG(0.4), LOG(0.3)], [LOG(0.9), LOG(0.01)], [-math.inf, 0.0], [math.inf] * 2]]
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(1, 4),
        teacher_topk_logprobs_B_T_K=torch.tensor(teacher),
        student_topk_logprobs_B_T_K=torch.tensor(student),
        response_mask_B_T=torch.tensor([[True, True, True, False]]),
    )
    torch.testing.assert_close(support_weights(inputs), torch.tensor([[0.5, 1.0, 0.0, 0.0]]))


def test_a_nan_teacher_logprob_at_a_read_token_is_not_hidden() -> None:
    """A nan on a prefix token (read by the running rules only) poisons the weight for the rest
    of its row, and only there, so the loss turns non-finite and the loop skips the step, rather
    than training with a silently wrong weight."""
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(2, 3),
        behavior_logprobs_B_T=torch.zeros(2, 3),
        teacher_logprobs_B_T=torch.tensor([[math.nan, -1.0, -1.0], [-1.0, -1.0, -1.0]]),
        trust_uniform_B_T=torch.full((2, 3), 0.99),
        response_mask_B_T=torch.tensor([[False, True, True], [True, True, True]]),
        prefix_mask_B_T=torch.tensor([[True, False, False], [False, False, False]]),
    )
    for weights in (surprise_weights(inputs, 2.0, 4.0), prefix_gate_weights(inputs, -5.0)):
        assert weights[0, 0] == 0.0 and weights[0, 1:].isnan().all()
        assert weights[1].tolist() == [1.0, 1.0, 1.0]
    for rule in ("surprise", "prefix_gate"):
        cfg = LossConfig(outlier="clip", outlier_weighting=rule)
        loss, metrics = LOSSES["tropd"](inputs, cfg, 6.0)
        assert not torch.isfinite(loss) and math.isnan(metrics["outlier_weight_sum"])
    clean, _ = LOSSES["tropd"](inputs, LossConfig(outlier="clip", outlier_weighting="none"), 6.0)
    assert torch.isfinite(clean)  # plain TrOPD never reads the prefix's teacher log-prob


def test_earlier_sum_is_exclusive_and_keeps_inf_out_of_its_own_slot() -> None:
    values = torch.tensor([[1.0, math.inf, 2.0], [0.5, 0.5, 0.5]])
    expected = torch.tensor([[0.0, 1.0, math.inf], [0.0, 0.5, 1.0]])
    torch.testing.assert_close(earlier_sum(values), expected)
    assert earlier_sum(torch.zeros(2, 0)).shape == (2, 0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_no_gradient_flows_through_the_weight(cfg: LossConfig) -> None:
    inputs = make_batch(3).inputs
    teacher = inputs.teacher_logprobs_B_T.detach().requires_grad_()
    teacher_K = inputs.teacher_topk_logprobs_B_T_K.detach().requires_grad_()
    student_K = inputs.student_topk_logprobs_B_T_K.detach().requires_grad_()
    leaves = dataclasses.replace(
        inputs,
        teacher_logprobs_B_T=teacher,
        teacher_topk_logprobs_B_T_K=teacher_K,
        student_topk_logprobs_B_T_K=student_K,
    )
    weights = outlier_rule_weights(leaves, cfg)
    assert weights is not None and weights.grad_fn is None and not weights.requires_grad
    # In the loss, the student's top-k gets exactly w_t * dFKL_t: nothing through w_t.
    loss, _ = LOSSES["tropd"](leaves, cfg, normalizer=100.0)
    constant = dataclasses.replace(leaves, outlier_weight_B_T=outlier_rule_weights(leaves, cfg))
    plain, _ = LOSSES["tropd"](constant, LossConfig(outlier_weighting="none"), normalizer=100.0)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(_grad(loss, student_K), _grad(plain, student_K))
    assert not _grad(loss, teacher).any() and not _grad(loss, teacher_K).any()


# ----------------------------------------------------------------------------- the weighted loss

LOSS_CASES = [
    (rule, outlier, given)
    for rule in RULES
    for outlier, given in (("topk_fkl", False), ("topk_fkl", True), ("topk_fkl_reward", False))
] + [("surprise", "clip", True), ("prefix_gate", "mask", False)]
LOSS_IDS = [f"{r}-{o}-{'w' if g else 'nw'}" for r, o, g in LOSS_CASES]


def _loss_cfg(rule: str, outlier: str) -> LossConfig:
    # c = 1 and a -3 gate make every branch occur in these small batches; tau = -1 for clip.
    return LossConfig(
        outlier=outlier,
        outlier_weighting=rule,
        surprise_c=1.0,
        prefix_gate_threshold=-3.0,
        tau=-1.0,
        beta_guidance=0.1,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("rule", "outlier", "given"), LOSS_CASES, ids=LOSS_IDS)
def test_weighted_tropd_matches_the_reference(
    rule: str, outlier: str, given: bool, dtype: torch.dtype
) -> None:
    cfg = _loss_cfg(rule, outlier)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    for seed in range(3):
        batch = make_batch(seed, dtype=dtype, weights=given)
        own = batch.inputs.response_mask_B_T.sum() + batch.inputs.prefix_B_T.sum()
        normalizer = float(own) + 3.0  # other micro-batches
        loss, metrics = LOSSES["tropd"](batch.inputs, cfg, normalizer)
        expected, weights = ref_loss(batch.inputs, cfg, normalizer)
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            _grad(loss, batch.logits_B_T_V).double(),
            _grad(expected, batch.logits_B_T_V).double(),
            **tol,
        )
        assert metrics["outlier_weight_count"] == len(weights)
        assert metrics["outlier_weight_sum"] == pytest.approx(sum(weights), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("rule", "outlier", "given"), LOSS_CASES, ids=LOSS_IDS)
def test_weighted_tropd_ignores_garbage(rule: str, outlier: str, given: bool) -> None:
    cfg = _loss_cfg(rule, outlier)
    batch = make_batch(1, weights=given)
    dirty = with_garbage(batch.inputs)
    originals = {n: getattr(batch.inputs, n) for n in FLOAT_FIELDS}
    clean = dataclasses.replace(
        dirty, **{n: value.detach() for n, value in originals.items() if value is not None}
    )
    normalizer = float(dirty.response_mask_B_T.sum() + dirty.prefix_B_T.sum())
    loss, metrics = LOSSES["tropd"](dirty, cfg, normalizer)
    clean_loss, clean_metrics = LOSSES["tropd"](clean, cfg, normalizer)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(clean_loss.item(), rel=1e-6)
    assert metrics == pytest.approx(clean_metrics, rel=1e-6, nan_ok=True)
    for name in ("student_logprobs_B_T", "student_topk_logprobs_B_T_K"):
        assert torch.isfinite(_grad(loss, getattr(dirty, name))).all(), name


@pytest.mark.parametrize("rule", RULES)
def test_row_split_micro_batches_give_the_same_loss(rule: str) -> None:
    cfg = _loss_cfg(rule, "topk_fkl")
    batch = make_batch(2, rows=8)
    parts = [slice(i, i + 2) for i in range(0, 8, 2)]
    micro = [
        dataclasses.replace(
            batch.inputs,
            **{
                f.name: getattr(batch.inputs, f.name)[p]
                for f in dataclasses.fields(LossInputs)
                if isinstance(getattr(batch.inputs, f.name), Tensor)
            },
        )
        for p in parts
    ]
    normalizer = float(batch.inputs.response_mask_B_T.sum() + batch.inputs.prefix_B_T.sum())
    loss, metrics = LOSSES["tropd"](batch.inputs, cfg, normalizer)
    results = [LOSSES["tropd"](m, cfg, normalizer) for m in micro]
    torch.testing.assert_close(torch.stack([r[0] for r in results]).sum(), loss)
    assert merge_metrics(r[1] for r in results) == pytest.approx(metrics, rel=1e-5, abs=1e-6)


def test_outlier_weight_metric_is_logged_whenever_a_rule_is_on() -> None:
    inputs = make_batch(0).inputs
    _, plain = LOSSES["tropd"](inputs, LossConfig(outlier_weighting="none"), 100.0)
    assert "outlier_weight_sum" not in plain
    outliers = plain["trust_frac_count"] - plain["trust_frac_sum"]
    assert outliers > 0
    for rule in RULES:
        for outlier in ("topk_fkl", "mask"):
            cfg = LossConfig(outlier=outlier, outlier_weighting=rule)
            _, metrics = LOSSES["tropd"](inputs, cfg, 100.0)
            assert metrics["outlier_weight_count"] == outliers
            assert 0.0 <= metrics["outlier_weight_sum"] <= metrics["outlier_weight_count"]


def test_rule_none_is_plain_tropd_and_other_methods_ignore_the_rule() -> None:
    inputs = make_batch(4).inputs
    assert outlier_rule_weights(inputs, LossConfig(outlier_weighting="none")) is None
    for method in ("opd", "clip", "fkl_topk"):
        plain, _ = LOSSES[method](inputs, LossConfig(method=method), 100.0)
        ruled, _ = LOSSES[method](
            inputs, LossConfig(method=method, outlier_weighting="support"), 100.0
        )
        assert torch.equal(plain, ruled)


def test_support_without_topk_names_the_field() -> None:
    inputs = dataclasses.replace(
        make_batch(0).inputs, teacher_topk_logprobs_B_T_K=None, student_topk_logprobs_B_T_K=None
    )
    cfg = LossConfig(outlier="mask", outlier_weighting="support")
    with pytest.raises(LossInputError, match="outlier_weighting=support.*teacher_topk_logprobs"):
        LOSSES["tropd"](inputs, cfg, 100.0)
    loss, _ = LOSSES["tropd"](inputs, LossConfig(outlier="mask", outlier_weighting="surprise"), 100)
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- config, registry


def test_defaults() -> None:
    cfg = LossConfig()
    assert cfg.outlier_weighting == "surprise"  # chosen by the quality benchmark (issue 8)
    assert (cfg.surprise_c, cfg.surprise_s0, cfg.prefix_gate_threshold) == (2.0, 4.0, -5.0)
    assert LossConfig(surprise_c=0.0).surprise_c == 0.0  # every nat of surprise counts


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("outlier_weighting", "soft"),
        ("outlier_weighting", None),
        ("surprise_c", -0.5),
        ("surprise_c", math.inf),
        ("surprise_s0", 0.0),
        ("surprise_s0", -1.0),
        ("surprise_s0", math.nan),
        ("prefix_gate_threshold", 0.0),
        ("prefix_gate_threshold", 1.0),
        ("prefix_gate_threshold", -math.inf),
    ],
)
def test_bad_values_are_refused_with_the_key_named(key: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        LossConfig(**{key: value})
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("method", "outlier", "rule", "topk"),
    [
        ("tropd", "mask", "none", False),
        ("tropd", "mask", "surprise", False),
        ("tropd", "clip", "prefix_gate", False),
        ("tropd", "mask", "support", True),
        ("tropd", "clip", "support", True),
        ("tropd", "topk_fkl", "surprise", True),
        ("opd", "topk_fkl", "support", False),
    ],
)
def test_needs_topk_follows_the_rule(method: str, outlier: str, rule: str, topk: bool) -> None:
    cfg = LossConfig(method=method, outlier=outlier, outlier_weighting=rule)
    assert needs_topk(cfg) is topk
    assert (unmet_teacher_needs(cfg, has_topk=False, has_entropy=True) is None) is not topk


def test_unmet_needs_names_the_support_rule() -> None:
    cfg = LossConfig(outlier="mask", outlier_weighting="support")
    message = unmet_teacher_needs(cfg, has_topk=False, has_entropy=False)
    assert message is not None
    assert "tropd with outlier='mask' and outlier_weighting='support'" in message
