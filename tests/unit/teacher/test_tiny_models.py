"""tiny_models: real architectures load through Auto* and builds are deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.teacher.fingerprint import fingerprint_of
from tropd.teacher.tiny_models import BOS_ID, EOS_ID, PAD_ID, build_tiny_cli, build_tiny_model

TEXT = "the sum of 12 + 30 is 42. Question: what is quux? émigré"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("fixture", "model_class"),
    [
        ("tiny_llama_dir", "LlamaForCausalLM"),
        ("tiny_qwen_dir", "Qwen2ForCausalLM"),
        ("tiny_gpt2_dir", "GPT2LMHeadModel"),
    ],
)
def test_loads_through_auto_classes(
    fixture: str, model_class: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == model_class
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        BOS_ID,
        EOS_ID,
        PAD_ID,
    )
    ids = tokenizer(TEXT).input_ids
    assert tokenizer.decode(ids) == TEXT  # byte-level: any text round-trips
    assert model.get_output_embeddings().weight.shape[0] >= len(tokenizer)
    logits = model(torch.tensor([[BOS_ID, *ids]])).logits
    assert logits.shape == (1, len(ids) + 1, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_architectures_share_one_tokenizer(
    tiny_llama_dir: Path, tiny_qwen_dir: Path, tiny_gpt2_dir: Path
) -> None:
    # transformers rebuilds a qwen2 folder's tokenizer as Qwen2Tokenizer: it must still agree.
    tokenizers = [
        AutoTokenizer.from_pretrained(d) for d in (tiny_llama_dir, tiny_qwen_dir, tiny_gpt2_dir)
    ]
    assert len({fingerprint_of(t) for t in tokenizers}) == 1
    assert len({tuple(t(TEXT).input_ids) for t in tokenizers}) == 1


def test_vocab_multiple_pads_output_layer(tiny_qwen_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    assert model.config.vocab_size % 64 == 0
    assert model.config.vocab_size > len(tokenizer)


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    sizes = {"hidden": 32, "layers": 1, "heads": 2, "vocab_words": 20}
    a = build_tiny_model(tmp_path / "a", "llama", seed=7, **sizes)
    b = build_tiny_model(tmp_path / "b", "llama", seed=7, **sizes)
    c = build_tiny_model(tmp_path / "c", "llama", seed=8, **sizes)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(b / name), name
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    state_a = AutoModelForCausalLM.from_pretrained(a).state_dict()
    state_b = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path, "gpt2", hidden=16, layers=1, heads=2, vocab_words=4)
    assert torch.equal(torch.rand(3), expected)


def test_cli_helper_and_bad_arguments(tmp_path: Path) -> None:
    summary = build_tiny_cli(str(tmp_path / "m"), arch="qwen2", preset="tiny")
    assert "qwen2 'tiny'" in summary and "M parameters" in summary
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_tiny_cli(str(tmp_path / "x"), preset="huge")
    with pytest.raises(ValueError, match="unknown tiny-model arch 'mamba'"):
        build_tiny_model(tmp_path / "y", "mamba")
    with pytest.raises(ValueError, match="multiple of heads"):
        build_tiny_model(tmp_path / "z", hidden=30, heads=4)
