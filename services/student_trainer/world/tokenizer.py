"""The built-in world's tokenizer: one token per character, as an ordinary HF fast tokenizer.

A `tokenizers` WordLevel model over the addition task's symbols, wrapped in
`PreTrainedTokenizerFast`, so teacher and students load it with `AutoTokenizer` like any hub
checkpoint's. Encoding prepends <bos> (never appends <eos>: a prompt is continued, not closed);
decoding concatenates tokens without spaces, so `decode(ids, skip_special_tokens=True)` gives
back exactly the text that was encoded. Characters outside the vocabulary become <unk>.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tropd.trainer.tasks.addition import SYMBOLS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Special tokens take the first ids: pad 0, bos 1, eos 2, unk 3; then one id per symbol.
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_vocab(symbols: str = SYMBOLS) -> dict[str, int]:
    tokens = [*SPECIAL_TOKENS, *symbols]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"duplicate symbols in {symbols!r}")
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer(symbols: str = SYMBOLS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `symbols` with pad/bos/eos/unk special tokens."""
    vocab = build_vocab(symbols)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1 << 16,
    )
