"""`LossConfig`: which loss the trainer optimises and its knobs.

Each method is described in docs/architecture.md#the-algorithm.

Data only: the defaults live here and nowhere else; the loss functions read them, the trainer
reads `method`/`outlier`/`outlier_weighting`/`topk` to decide what to ask the teacher for (see
`registry`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal[
    "opd", "tropd", "clip", "mask", "fkl_topk", "jsd", "eopd", "entropy_top20", "sft", "rkl_topk"
]
Outlier = Literal["topk_fkl", "topk_fkl_reward", "mask", "clip", "rkl_topk"]
TrustSignal = Literal["k1", "rkl_topk"]
OutlierWeighting = Literal["none", "surprise", "support", "prefix_gate"]


class LossConfig(BaseModel):
    """The loss surface of one training run; one switch (`method`) picks the method.

    Every field is validated on construction; a bad value raises pydantic's `ValidationError`,
    whose message names the key (e.g. `tau`) and the violated bound.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )

    method: Method = "tropd"
    """Which loss: `tropd` (the product) or one of the baselines
    (docs/architecture.md#baselines)."""

    outlier: Outlier = "topk_fkl"
    """TrOPD only: what outlier tokens (trust test failed) contribute. `topk_fkl` is the
    paper's final choice and beat `topk_fkl_reward` in 3 of 4 informative settings of the
    quality benchmark (docs/results.md), hence the default."""

    outlier_weighting: OutlierWeighting = "surprise"
    """TrOPD only (other methods ignore it): the per-token weight `w_t` in [0, 1] on the outlier
    term, `loss_t = M_t*OPD_t + (1 - M_t)*w_t*outlier_t` (`outlier_weights` defines the rules;
    docs/architecture.md#outlier-weightings). `none` is plain TrOPD (w_t = 1); `surprise` and
    `prefix_gate` discount a teacher that the row's earlier tokens already surprised; `support`
    needs the teacher's top-k. Default `surprise`: in the quality benchmark (docs/results.md) it
    was never below OPD in any setting and had the best mean over settings, while plain TrOPD
    fell 26 points below OPD at lr 3e-5."""

    trust_signal: TrustSignal = "k1"
    """TrOPD only: the term on trusted tokens. `k1` is OPD's single-sample policy gradient
    `-r_t * log pi_S(x_t)`; `rkl_topk` the exact reverse KL over the student's own top-k
    (`student_topk`, with a tail bucket; `reverse_kl`), the teacher scoring those ids through
    `candidates`."""

    student_topk: int = Field(default=16, ge=1)
    """`rkl_topk` (method, trust signal or outlier mode): how many of the student's own most
    likely ids per position the teacher scores (its `candidates`); the rest is one tail bucket."""

    rkl_floor: float | None = Field(default=None, lt=0.0)
    """`rkl_topk`: floor in nats on each candidate's log-ratio `log pi_T(v) - log pi_S(v)` (and
    the tail's), bounding what a token the teacher finds near-impossible can cost; None: exact."""

    sequence_trust: bool = False
    """TrOPD and `rkl_topk`: weight every term of a row by `exp(-E / sequence_trust_scale)`, `E`
    the row's mean excess teacher surprise per response token `max(0, -lp_T(x_t) - surprise_c)`
    (a constant): rollouts the teacher finds out of distribution move the student less."""

    sequence_trust_scale: float = Field(default=1.0, gt=0.0)
    """`sequence_trust`: nats of mean excess surprise per token that divide the row's weight by e.
    Our choice: the habit student's rows at the start (a ~13-nat separator every ~10 tokens) get
    ~0.3-0.5, rows in the teacher's format ~1."""

    surprise_c: float = Field(default=2.0, ge=0.0)
    """`surprise`: nats of teacher surprise per token that count as ordinary; only the excess
    `max(0, -lp_T - c)` accumulates. The rule's proposed value, kept after the sensitivity sweep
    in docs/results.md (c = 1, 2, 4)."""

    surprise_s0: float = Field(default=4.0, gt=0.0)
    """`surprise`: the scale of `w_t = exp(-S_t / s0)` in nats of accumulated excess surprise.
    The rule's proposed value, kept after the sensitivity sweep in docs/results.md (s0 = 2, 4,
    8)."""

    prefix_gate_threshold: float = Field(default=-5.0, lt=0.0)
    """`prefix_gate`: w_t = 0 once an earlier token of the row had `lp_T` below this (nats). The
    rule's proposed value, the same -5 as `tau`; a log-prob is <= 0, so a threshold >= 0 would
    gate all."""

    topk: int = Field(default=64, ge=1)
    """How many teacher top-k candidates to request for the top-k forward-KL terms. The losses use
    every column they are given, so a teacher that caps k at its vocabulary is fine."""

    tau: float = -5.0
    """Reward floor / threshold in nats on `r_t = lp_T - lp_S`: `clip` floors r_t at tau, `mask`
    drops tokens with r_t < tau, TrOPD's `clip` outlier mode floors outliers. Our choice: -5 keeps
    tokens the teacher gives >= ~1/150 of the student's probability untouched and caps the
    ~-13-nat rewards a near-certain teacher gives tokens it would never write (the built-in
    teacher does); REOPOLD's own value is not reproduced."""

    beta_guidance: float = Field(default=0.001, ge=0.0)
    """Weight of the teacher-prefix likelihood term `-beta * log pi_S(x)` on guidance-prefix
    tokens (docs/architecture.md#guidance-prefixes)."""

    jsd_beta: float = Field(default=0.5, gt=0.0, lt=1.0)
    """`jsd` mixture weight: M = beta*pi_T + (1-beta)*pi_S; 0 and 1 would degenerate to one KL."""

    eopd_entropy_threshold: float = Field(default=0.5, ge=0.0)
    """`eopd`: add the top-k forward KL where the teacher's entropy (nats) exceeds this. Our choice:
    0.5 nats sits below ln 2 = 0.69, the entropy of a teacher split evenly between two tokens, and
    far above a near-certain teacher's; the EOPD paper's own rule is not reproduced."""

    entropy_top_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """`entropy_top20`: the fraction of response tokens (highest student entropy) that get OPD."""

    anchor_kl: float = Field(default=0.0, ge=0.0)
    """Weight beta of a KL anchor to the starting student, `beta_t * KL(pi_S || pi_start)` on
    response tokens (`anchor`; every on-policy method): the trainer keeps a frozen copy of the
    student as loaded (one more model in memory, one more no-grad forward per micro-batch while
    beta_t > 0). 0 = off."""

    anchor_decay_steps: int | None = Field(default=None, ge=1)
    """`anchor_kl`: beta_t falls linearly from `anchor_kl` at step 0 to 0 at this step (then the
    frozen copy is no longer read); None = constant."""

    @model_validator(mode="after")
    def _anchor_needs_samples(self) -> LossConfig:
        if self.anchor_kl > 0 and self.method == "sft":
            raise ValueError(
                "anchor_kl needs the student's own samples (its K1 estimate is on-policy); sft "
                "trains on teacher drafts: set anchor_kl=0 or pick an on-policy method"
            )
        return self
