"""A byte-level tokenizer: every UTF-8 byte is a token, plus two special tokens.

    ids 0..255   the bytes themselves
    256          BOS (beginning of sequence / document separator)
    257          PAD

Byte-level tokenization needs no training and no vocabulary file, and it round-trips any
text exactly. Its cost is length: one token per byte, so natural text gives about 4x more
tokens than a BPE tokenizer would.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

# Readable labels for the control bytes that have a conventional escape.
_ESCAPES = {9: "\\t", 10: "\\n", 13: "\\r"}


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """Bytes 0..255 as tokens, then `bos_id` (256) and `pad_id` (257).

    Any object with the same `vocab_size`, `bos_id`, `encode(text, bos=...)`,
    `decode(ids)` and `token_str(id)` can stand in for it in `mechjax.data.text`.
    """

    vocab_size: ClassVar[int] = 258
    bos_id: ClassVar[int] = 256
    pad_id: ClassVar[int] = 257
    # Names the encoding in cache keys: change it if the encoding ever changes.
    cache_key: ClassVar[str] = "bytes-v1"

    def encode(self, text: str | bytes, bos: bool = True) -> np.ndarray:
        """text -> ids [pos] int32: the UTF-8 bytes, preceded by BOS if `bos`."""
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, bytes | bytearray):
            data = bytes(text)
        else:
            raise ValueError(f"encode takes a str or bytes, got {type(text).__name__}")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        if bos:
            ids = np.concatenate([np.array([self.bos_id], np.int32), ids])
        return ids

    def decode(self, ids) -> str:
        """ids [pos] -> text. Special tokens are skipped; invalid UTF-8 becomes U+FFFD."""
        ids = self._check_ids(ids).reshape(-1)
        data = ids[ids < 256].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        """A short readable label for one id (figure and table labels).

        Printable ASCII is itself ("a", " ", "{"); tab, newline and carriage return are
        "\\t", "\\n", "\\r"; other bytes are "\\xNN"; specials are "<bos>" and "<pad>".
        """
        ids = self._check_ids(token_id)
        if ids.ndim != 0:
            raise ValueError(f"token_str takes one id, got shape {ids.shape}; map it over the ids")
        i = int(ids)
        if i == self.bos_id:
            return "<bos>"
        if i == self.pad_id:
            return "<pad>"
        if 0x20 <= i <= 0x7E:
            return chr(i)
        return _ESCAPES.get(i, f"\\x{i:02x}")

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); found {np.unique(bad)[:10].tolist()}"
            )
        return ids.astype(np.int64)
