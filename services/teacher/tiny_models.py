"""Tiny random-weight causal LMs of real `transformers` architectures, built locally.

Tests, the demo and benchmarks load these through exactly the path a real checkpoint takes
(`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` on a `save_pretrained` folder), so
nothing here is a fake: only the sizes are small and the weights random. No download, ever.
The same arguments and seed give identical weights and an identical tokenizer.

    tropd-teacher build-tiny OUT [--arch llama|qwen2|gpt2] [--preset tiny|bench-10m]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ARCHS = ("llama", "qwen2", "gpt2")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3, in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# Named sizes for the CLI; "bench-10m" is ~10M parameters with the llama or qwen2 layout.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"vocab_words": 96, "hidden": 64, "layers": 2, "heads": 4},
    "bench-10m": {"vocab_words": 2000, "hidden": 320, "layers": 8, "heads": 8},
}

# Whole words the tokenizer learns as single tokens; synthetic letter-only words fill the rest.
_BASE_WORDS = (
    "the a an of to and in is it that for on with as was he she they we you i this be at by "
    "not are from or have had but what all were when there can question answer step carry sum "
    "so then add digit number first last next plus equals"
)
_PUNCTUATION = ("+", "=", ";", ".", ",", "?", "!", "(", ")", "-")
# Qwen2's pre-tokenisation regex (digits split one by one): the qwen2 model type makes
# transformers 5 rebuild the tokenizer as `Qwen2Tokenizer` from vocab + merges, whatever
# tokenizer.json says, so every tiny tokenizer uses exactly that layout to load identically.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def word_list(vocab_words: int) -> list[str]:
    """The `vocab_words` whole words of the tiny vocabulary (deterministic, letters only)."""
    words = _BASE_WORDS.split()[:vocab_words]
    for i in range(vocab_words - len(words)):
        # i in base 26 spelled with letters: synthetic words stay a single pre-token.
        letters, rest = "", i
        while True:
            rest, digit = divmod(rest, 26)
            letters = chr(ord("a") + digit) + letters
            if rest == 0:
                break
        words.append("q" + letters)
    return words


def _bpe_vocab(vocab_words: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Specials, the 256 byte symbols, then one merge chain per space-prefixed word.

    Every merge extends a "Ġ..." prefix by one symbol, so BPE always has exactly one merge to
    apply inside a pre-token: encoding is unambiguous and any text round-trips through bytes.
    """
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *_byte_symbols()])}
    merges: list[tuple[str, str]] = []
    space = "\u0120"  # byte-level symbol of " "
    for word in [*_PUNCTUATION, *word_list(vocab_words)]:
        piece = space + word
        prefix = piece[0]
        for symbol in piece[1:]:
            if prefix + symbol not in vocab:
                vocab[prefix + symbol] = len(vocab)
                merges.append((prefix, symbol))
            prefix += symbol
    return vocab, merges


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-symbol table in byte order: printable bytes stand for themselves."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build_tokenizer(vocab_words: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in the Qwen2 layout over a fixed word list.

    Args:
        vocab_words: whole words learned as tokens (on top of 4 specials, 256 byte symbols and
            punctuation); any other text still encodes, byte by byte.
        model_max_length: recorded in the tokenizer config.
    Returns:
        An HF fast tokenizer with bos/eos/pad/unk set (<pad>=0, <bos>=1, <eos>=2, <unk>=3). It
        adds no special tokens when encoding, like Qwen2's: callers prepend <bos> themselves.
    """
    vocab, merges = _bpe_vocab(vocab_words)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def _mlp_width(hidden: int) -> int:
    # Llama's ~8/3 expansion rounded up to a multiple of 16.
    return 16 * math.ceil(hidden * 8 / 3 / 16)


def _config(arch: str, sizes: dict[str, int]) -> Any:
    """A transformers config for `arch`; GQA (half as many KV heads) where the layout has it."""
    hidden, layers, heads = sizes["hidden"], sizes["layers"], sizes["heads"]
    special: dict[str, Any] = {
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }  # fmt: skip
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=sizes["vocab_size"],
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=sizes["max_position_embeddings"],
            **special,
        )
    kv_heads = heads // 2 if heads % 2 == 0 else heads
    common: dict[str, Any] = dict(
        vocab_size=sizes["vocab_size"],
        hidden_size=hidden,
        intermediate_size=_mlp_width(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=sizes["max_position_embeddings"],
        tie_word_embeddings=False,
        **special,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny-model arch {arch!r}; known: {', '.join(ARCHS)}")


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    vocab_words: int = 96,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 512,
    vocab_multiple: int = 1,
) -> Path:
    """Build and save a random-weight causal LM and its tokenizer into `out_dir`.

    Args:
        out_dir: folder to write (created; existing files with the same names are replaced).
        arch: "llama", "qwen2" or "gpt2".
        vocab_words: whole words learned as single tokens (the tokenizer also holds 4 specials,
            256 byte symbols, punctuation and the words' prefixes).
        hidden, layers, heads: model width, depth and attention heads (hidden % heads == 0).
        seed: weight-initialisation seed; the global torch RNG is left untouched.
        max_position_embeddings: longest sequence the model accepts.
        vocab_multiple: round the output layer's rows up to a multiple of this, as real
            checkpoints do (then the model's vocab size exceeds the tokenizer's).
    Returns:
        The folder, loadable with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`.
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    tokenizer = build_tokenizer(vocab_words, max_position_embeddings)
    sizes = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": vocab_multiple * math.ceil(len(tokenizer) / vocab_multiple),
    }
    config = _config(arch, sizes)
    # Larger than the usual 0.02 so logits have a spread of a few nats: a near-uniform
    # teacher would make top-k, top-p and rank checks vacuous.
    config.initializer_range = 2.5 / math.sqrt(hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model_dir: str | Path) -> int:
    """Number of parameters of a saved model (loads it on CPU)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def build_tiny_cli(out_dir: str, arch: str = "llama", preset: str = "tiny", seed: int = 0) -> str:
    """Entry point for `tropd-teacher build-tiny`: build a preset and describe the result.

    Args:
        out_dir: folder to write.
        arch: "llama", "qwen2" or "gpt2".
        preset: a key of PRESETS ("tiny", "bench-10m").
        seed: weight seed.
    Returns:
        A one-line summary for the CLI to print.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    path = build_tiny_model(out_dir, arch, seed=seed, **PRESETS[preset])
    n_params = count_parameters(path)
    return (
        f"wrote {arch} '{preset}' model ({n_params / 1e6:.2f}M parameters, seed {seed}) to {path}"
    )
