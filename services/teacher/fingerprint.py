"""Tokenizer fingerprint: the identity student and teacher compare before exchanging token ids.

Light on purpose (no transformers import): it works from a vocabulary mapping and special ids,
which both an HF tokenizer (`get_vocab()`) and a bare `tokenizers.Tokenizer` provide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerFingerprint:
    sha256: str
    vocab_size: int
    bos_id: int  # -1 when absent
    eos_id: int
    pad_id: int

    def short(self) -> str:
        return f"{self.sha256[:12]} (vocab {self.vocab_size}, bos {self.bos_id}, " \
               f"eos {self.eos_id}, pad {self.pad_id})"


def _id(value: int | None) -> int:
    return -1 if value is None else int(value)


def compute_fingerprint(
    vocab: Mapping[str, int], bos_id: int | None, eos_id: int | None, pad_id: int | None
) -> TokenizerFingerprint:
    """Hash the token -> id mapping and the special ids into a stable fingerprint.

    Args:
        vocab: every token string with its id (added tokens included).
        bos_id, eos_id, pad_id: special ids, None where the tokenizer has none.
    Returns:
        The fingerprint; equal vocabularies and special ids give equal digests on any machine.
    """
    special = {"bos": _id(bos_id), "eos": _id(eos_id), "pad": _id(pad_id)}
    payload = json.dumps(
        {"vocab": sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])), "special": special},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    return TokenizerFingerprint(digest, len(vocab), special["bos"], special["eos"], special["pad"])


def fingerprint_of(tokenizer: object) -> TokenizerFingerprint:
    """Fingerprint of an HF `PreTrainedTokenizerBase` (anything with get_vocab and *_token_id)."""
    return compute_fingerprint(
        tokenizer.get_vocab(),  # type: ignore[attr-defined]
        getattr(tokenizer, "bos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
    )
