"""A causal LM's output layer as the student and the teacher both apply it: the linear head plus
the logit transforms some architectures add after it, in float32.

Both sides compute log-probs from hidden states chunk by chunk (never the model's full
[B, T, V] logits), so both need the head on its own; one definition keeps their logits equal to
the model's. Needs torch (not part of the light `tropd.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OutputHead:
    """The model's output layer plus the logit transforms some architectures apply after it.

    Known transforms, applied in float32 in the model's order: Cohere's `logit_scale`
    (multiply), Granite's `logits_scaling` (divide), Gemma-2/3's `final_logit_softcapping`
    (cap * tanh(logits / cap)). `check_against_model` refuses any other.
    """

    linear: torch.nn.Module
    vocab_size: int
    multiply: float = 1.0
    divide: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: Any) -> OutputHead:
        """The head of a `transformers` causal LM (`get_output_embeddings()` and its config)."""
        linear = model.get_output_embeddings()
        if linear is None:
            raise ValueError(f"{type(model).__name__} has no output layer (not a causal LM head)")
        config = model.get_text_config() if hasattr(model, "get_text_config") else model.config
        return cls(
            linear=linear,
            vocab_size=int(linear.weight.shape[0]),
            multiply=float(getattr(config, "logit_scale", None) or 1.0),
            divide=float(getattr(config, "logits_scaling", None) or 1.0),
            softcap=getattr(config, "final_logit_softcapping", None),
        )

    def logits(self, hidden_N_D: torch.Tensor) -> torch.Tensor:
        """float32 [N, V] logits of hidden states [N, D] (matmul in the autocast/model dtype)."""
        logits_N_V = self.linear(hidden_N_D).float()
        if self.multiply != 1.0:
            logits_N_V = logits_N_V * self.multiply
        if self.divide != 1.0:
            logits_N_V = logits_N_V / self.divide
        if self.softcap:
            logits_N_V = torch.tanh(logits_N_V / self.softcap) * self.softcap
        return logits_N_V

    def check_against_model(self, model: Any, ids_T: torch.Tensor) -> None:
        """Raise ValueError if `logits(decoder_hidden(ids))` differs from the model's logits."""
        inputs = {"input_ids": ids_T[None].long(), "attention_mask": torch.ones_like(ids_T[None])}
        with torch.no_grad():
            expected_T_V = model(**inputs).logits[0].float()
            got_T_V = self.logits(decoder_hidden(model, **inputs)[0])
        scale = expected_T_V.abs().max().clamp(min=1.0)
        error = float((got_T_V - expected_T_V).abs().max() / scale)
        tolerance = 1e-4 if self.linear.weight.dtype == torch.float32 else 2e-2
        if not error <= tolerance:
            raise ValueError(
                f"{type(model).__name__}: output layer applied to the decoder's hidden states "
                f"differs from the model's logits (relative error {error:.2e} > "
                f"{tolerance:.0e}); its head applies a transform tropd does not implement"
            )


def decoder_hidden(model: Any, **inputs: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, L, D] of a causal LM's decoder (the model minus its output layer)."""
    return model.base_model(**inputs, use_cache=False).last_hidden_state
