"""Prompt ids as the model sees them: the chat template (on when the tokenizer has one), system
prompts, template kwargs, stop ids; and the decode round-trip warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from tropd.trainer.errors import SetupError
from tropd.trainer.prompts import PromptCodec, encode_prompts, prompt_format, stop_ids
from tropd.trainer.setup import warn_round_trip
from tropd.trainer.tasks.base import Example
from tropd.trainer.world import builtin_world_dir


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_qwen3_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_chat_qwen3_dir)


def _template_ids(tokenizer, messages: list[dict[str, str]], **kwargs: object) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
    )
    return list(out["input_ids"])


def test_chat_template_on_by_default_with_system_prompts(chat_tokenizer) -> None:
    fmt = prompt_format(chat_tokenizer, None, system_prompt="Be brief.",
                        chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    assert fmt.chat_template
    plain = Example("What is 2 plus 3?", "5")
    own = Example("What is 1 plus 1?", "2", system="Show your work.")
    chat = Example("2+2?", "4", messages=({"role": "system", "content": "Terse."},
                                          {"role": "user", "content": "2+2?"}))  # fmt: skip
    ids = encode_prompts(chat_tokenizer, [plain, own, chat], fmt)
    off = {"enable_thinking": False}
    assert ids[0] == _template_ids(chat_tokenizer, [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": plain.prompt}
    ], **off)  # fmt: skip
    assert ids[1] == _template_ids(chat_tokenizer, [
        {"role": "system", "content": "Show your work."}, {"role": "user", "content": own.prompt}
    ], **off)  # fmt: skip
    assert ids[2] == _template_ids(chat_tokenizer, list(chat.messages or ()), **off)
    text = chat_tokenizer.decode(ids[0])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # kwargs reach it


def test_template_off_encodes_the_raw_prompt(chat_tokenizer) -> None:
    fmt = prompt_format(chat_tokenizer, False)
    assert encode_prompts(chat_tokenizer, [Example("hello there", "x")], fmt) == [
        chat_tokenizer("hello there")["input_ids"]
    ]
    with pytest.raises(SetupError, match="need the chat template"):
        prompt_format(chat_tokenizer, False, system_prompt="Be brief.")
    with pytest.raises(SetupError, match="chat template is off"):
        encode_prompts(chat_tokenizer, [Example("q", "a", messages=({"role": "user",
                                                                     "content": "q"},))], fmt)


def test_builtin_world_has_no_template_and_encodes_as_before() -> None:
    tokenizer = AutoTokenizer.from_pretrained(builtin_world_dir() / "student")
    fmt = prompt_format(tokenizer, None)
    assert not fmt.chat_template
    assert encode_prompts(tokenizer, [Example("1136+0986=", "x")], fmt) == [
        tokenizer("1136+0986=")["input_ids"]
    ]
    assert stop_ids(tokenizer, 2, fmt) == (tokenizer.eos_token_id,)
    with pytest.raises(SetupError, match="has no chat template"):
        prompt_format(tokenizer, True)


def test_stop_ids_cover_generation_config_and_turn_end(chat_tokenizer, tiny_chat_qwen3_dir) -> None:
    fmt = prompt_format(chat_tokenizer, None)
    generation = GenerationConfig.from_pretrained(tiny_chat_qwen3_dir)
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(chat_tokenizer, generation.eos_token_id, fmt) == (im_end, 2)
    codec = PromptCodec(chat_tokenizer, fmt, (im_end, 2))
    assert codec.response([5, 6, im_end]).finish_reason == "eos"
    assert codec.response([5, 6, 7]).finish_reason == "length"


def _space_dropping_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel vocabulary decoded by a ByteLevel decoder: words come back glued together,
    the failure that once scored a 52% model at 0% without a word."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", "what", "is", "2", "+",
                                         "3", "?", "####", "5"])}  # fmt: skip
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")  # fmt: skip


def test_a_tokenizer_that_drops_spaces_gets_the_warning(
    chat_tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = _space_dropping_tokenizer()
    codec = PromptCodec(tokenizer, prompt_format(tokenizer, None), (1,))
    example = Example("what is 2 + 3 ?", "#### 5")
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.setup"):
        warn_round_trip(codec, [example])
    messages = [r.getMessage() for r in caplog.records]
    assert any("loses characters in 1 of 1 prompts: 'what is 2 + 3 ?' came back as 'whatis2+3?'"
               in m for m in messages), messages  # fmt: skip
    assert any("answers: '#### 5' came back as '####5'" in m for m in messages), messages
    caplog.clear()
    good = PromptCodec(chat_tokenizer, prompt_format(chat_tokenizer, None), (2,))
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.setup"):
        warn_round_trip(good, [Example("What is 2 plus 3?", "so 5\n#### 5")])
    assert not caplog.records
