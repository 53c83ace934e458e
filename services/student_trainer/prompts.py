"""Examples to prompt token ids, and completion ids back to text: the one place the trainer
tokenises. The ids made here go unchanged to the student's rollouts and to the teacher.

With a chat template (the default when the tokenizer has one; `task.chat_template=false` turns
it off) a prompt is `tokenizer.apply_chat_template(messages, add_generation_prompt=True,
**task.chat_template_kwargs)`, where `messages` is the example's chat, or one user turn with
its prompt, preceded by a system turn (the example's own system prompt, else
`task.system_prompt`) unless the chat has one. Without a template a prompt is
`tokenizer(prompt)["input_ids"]`, so the tokenizer's own special tokens (e.g. a bos) apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from transformers import PreTrainedTokenizerBase

from tropd.trainer.errors import SetupError
from tropd.trainer.tasks.base import Example, FinishReason, Response

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptFormat:
    """How examples become prompts: resolved from `task.*` and what the tokenizer offers."""

    chat_template: bool
    system_prompt: str | None = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)


def prompt_format(
    tokenizer: PreTrainedTokenizerBase,
    chat_template: bool | None,
    system_prompt: str | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> PromptFormat:
    """Resolve `task.chat_template` (None: on when the tokenizer has a template).

    Raises:
        SetupError: a template asked for that the tokenizer lacks, or template-only options
            (a system prompt, template kwargs) with the template off.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if chat_template is None:
        chat_template = has_template
    elif chat_template and not has_template:
        raise SetupError(
            "task.chat_template=true but the student's tokenizer has no chat template; "
            "use a tokenizer folder whose tokenizer_config.json carries one, or set it false"
        )
    if not chat_template and (system_prompt is not None or chat_template_kwargs):
        raise SetupError(
            "task.system_prompt and task.chat_template_kwargs need the chat template, which is "
            "off (task.chat_template=false, or the tokenizer has none)"
        )
    return PromptFormat(chat_template, system_prompt, dict(chat_template_kwargs or {}))


def chat_messages(example: Example, fmt: PromptFormat) -> list[dict[str, str]]:
    """The turns the chat template renders for `example`."""
    turns = [dict(t) for t in example.messages] if example.messages else [
        {"role": "user", "content": example.prompt}
    ]  # fmt: skip
    system = example.system if example.system is not None else fmt.system_prompt
    if system is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns


def _template(
    tokenizer: PreTrainedTokenizerBase, example: Example, fmt: PromptFormat, tokenize: bool
) -> Any:
    options: dict[str, Any] = {"return_dict": True} if tokenize else {}
    return tokenizer.apply_chat_template(
        chat_messages(example, fmt), add_generation_prompt=True, tokenize=tokenize,
        **options, **fmt.chat_template_kwargs,
    )  # fmt: skip


def render_prompt(tokenizer: PreTrainedTokenizerBase, example: Example, fmt: PromptFormat) -> str:
    """The prompt as text: the rendered template, or the example's prompt as it is."""
    if not fmt.chat_template:
        return example.prompt
    return cast(str, _template(tokenizer, example, fmt, tokenize=False))


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], fmt: PromptFormat
) -> list[list[int]]:
    """Prompt ids exactly as the student and the teacher see them."""
    if not fmt.chat_template:
        for ex in examples:
            if ex.messages:
                raise SetupError(
                    f"example {ex.id or ex.prompt[:40]!r} is a chat (messages) but the chat "
                    "template is off; turn task.chat_template on or give plain prompts"
                )
        return [list(tokenizer(ex.prompt)["input_ids"]) for ex in examples]
    return [list(_template(tokenizer, ex, fmt, tokenize=True)["input_ids"]) for ex in examples]


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: np.ndarray | Sequence[int]) -> str:
    """The text of one id sequence, special tokens dropped (what a task's verifier reads)."""
    return cast(str, tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True))


def stop_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | Sequence[int] | None,
             fmt: PromptFormat) -> tuple[int, ...]:  # fmt: skip
    """Every id that ends a response: the tokenizer's eos, the generation config's eos ids
    (Llama 3 and Qwen list several), and with the chat template the special token that closes
    an assistant turn, found by rendering one."""
    ids = [int(tokenizer.eos_token_id)]
    if isinstance(generation_eos, int):
        ids.append(generation_eos)
    elif generation_eos is not None:
        ids.extend(int(i) for i in generation_eos)
    if fmt.chat_template:
        end = _turn_end_id(tokenizer, fmt)
        if end is not None:
            ids.append(end)
    return tuple(dict.fromkeys(ids))


def _turn_end_id(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> int | None:
    marker = "tropd-turn-end-probe"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, **fmt.chat_template_kwargs)
    except Exception:  # a template may refuse a turn layout; then only the eos lists count
        return None
    after = str(text).rpartition(marker)[2]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return int(ids[0]) if ids and ids[0] in special else None


@dataclass(frozen=True)
class PromptCodec:
    """The student's tokenizer as a run uses it: examples to prompt ids (`fmt`), the ids that
    end a response (`eos_ids`), and response ids back to what a verifier reads."""

    tokenizer: PreTrainedTokenizerBase
    fmt: PromptFormat
    eos_ids: tuple[int, ...]

    def encode(self, examples: Sequence[Example]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, examples, self.fmt)

    def render(self, example: Example) -> str:
        return render_prompt(self.tokenizer, example, self.fmt)

    def response(
        self, ids: np.ndarray | Sequence[int], finish_reason: str | None = None
    ) -> Response:
        """`ids` as a verifier sees them; without a reason, "eos" iff they end with an eos id."""
        ids_list = [int(i) for i in ids]
        if finish_reason is None:
            finish_reason = "eos" if ids_list and ids_list[-1] in self.eos_ids else "length"
        if finish_reason not in ("eos", "length"):
            raise ValueError(f"finish_reason {finish_reason!r} is neither 'eos' nor 'length'")
        reason = cast(FinishReason, finish_reason)
        return Response(decode_text(self.tokenizer, ids_list), tuple(ids_list), reason)


@dataclass(frozen=True)
class RoundTripLoss:
    """A text that decode(encode(text)) does not give back."""

    text: str
    decoded: str

    @property
    def first_difference(self) -> int:
        pairs = zip(self.text, self.decoded, strict=False)
        return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(self.text),
                                                                         len(self.decoded)))


def round_trip_losses(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], special: bool
) -> list[RoundTripLoss]:
    """The texts that do not survive encode then decode.

    Args:
        texts: rendered prompts (`special=True`: their special tokens are part of the text and
            are decoded back) or plain text such as reference answers (`special=False`:
            decoded as a verifier reads completions, special tokens skipped).
    """
    losses = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = str(tokenizer.decode(ids, skip_special_tokens=not special))
        if decoded != text:
            losses.append(RoundTripLoss(text, decoded))
    return losses
