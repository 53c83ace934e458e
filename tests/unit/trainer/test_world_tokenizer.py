"""The built-in world's character tokenizer, as an ordinary HF fast tokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.tasks.addition import STYLES, SYMBOLS, AdditionTask, Problem, completion_text
from tropd.trainer.world.tokenizer import build_tokenizer

TEXT = "4321+8765=" + completion_text(Problem(1234, 5678), 4, STYLES["teacher"])


def test_vocab_and_special_ids() -> None:
    tokenizer = build_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.unk_token_id) == (2, 3)
    assert tokenizer.get_vocab() == {
        "<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3,
        **{symbol: 4 + i for i, symbol in enumerate(SYMBOLS)},
    }
    assert len(tokenizer) == 19


def test_one_token_per_character_bos_prepended_exact_round_trip() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == [tokenizer.convert_tokens_to_ids(c) for c in TEXT]
    assert tokenizer.eos_token_id not in ids  # a prompt is continued, never closed
    assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ids[1:]
    generated = [*ids, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(generated, skip_special_tokens=True) == TEXT
    assert tokenizer.decode(ids) == "<bos>" + TEXT


def test_unknown_characters_become_unk() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer("1 x")["input_ids"] == [1, 5, 3, 3]


def test_saved_tokenizer_loads_with_auto_and_keeps_its_fingerprint(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert fingerprint_of(loaded) == fingerprint_of(tokenizer) == fingerprint_of(build_tokenizer())
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    task = AdditionTask()
    batch = loaded([e.prompt for e in task.eval_examples()[:4]], return_tensors="pt", padding=True)
    assert batch["input_ids"].shape == (4, 1 + 2 * task.digits + 2)
