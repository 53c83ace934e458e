"""Text <-> ids with a model folder's `tokenizer.json`, through the `tokenizers` library only.

The two places that meet text do so here: the TGI-compatible HTTP routes (text in, like TGI)
and the `tgi` backend (ids out to a server that only takes text). No transformers import, so a
TGI-backed teacher runs without torch. Special ids come from `tokenizer_config.json` (or
`special_tokens_map.json`), as `transformers` reads them, so the fingerprint computed here
equals `tropd.teacher.fingerprint.fingerprint_of` on the same folder's `AutoTokenizer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from tropd.teacher.fingerprint import TokenizerFingerprint, compute_fingerprint


class TokenizerFilesError(ValueError):
    """The folder has no usable `tokenizer.json`."""


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the text ((0, 0) if added)


class TextTokenizer:
    """A fast tokenizer loaded from a folder, plus its special ids and fingerprint."""

    def __init__(self, folder: str | Path) -> None:
        """Args:
        folder: a save_pretrained folder holding tokenizer.json (and tokenizer_config.json).
        Raises:
            TokenizerFilesError: tokenizer.json is missing or unreadable.
        """
        path = Path(folder)
        try:
            self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise TokenizerFilesError(f"cannot load {path / 'tokenizer.json'}: {exc}") from None
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later one wins
            if (path / name).is_file():
                config.update(json.loads((path / name).read_text(encoding="utf-8")))
        self.bos_id = self._special_id(config.get("bos_token"))
        self.eos_id = self._special_id(config.get("eos_token"))
        self.pad_id = self._special_id(config.get("pad_token"))
        added = self._tok.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, tok in added.items() if tok.special)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.fingerprint: TokenizerFingerprint = compute_fingerprint(
            self._tok.get_vocab(with_added_tokens=True), self.bos_id, self.eos_id, self.pad_id
        )
        # What the tokenizer adds around any text (e.g. [<bos>]): TGI always adds it.
        self.added_prefix: tuple[int, ...] = tuple(self._tok.encode("").ids)

    def _special_id(self, value: Any) -> int | None:
        text = _token_text(value)
        return None if text is None else self._tok.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoded:
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        return Encoded(list(enc.ids), [(int(a), int(b)) for a, b in enc.offsets])

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text one token decodes to on its own (special tokens included)."""
        return self._tok.decode([token_id], skip_special_tokens=False)
