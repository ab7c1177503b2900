"""Tokenizers with one interface for toys and real models, and the byte-level tokenizer.

`Tokenizer` is the interface: four primitives a tokenizer provides (`encode`, `decode`,
`token_str` and the attributes `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `cache_key`)
and, built on them once, the helpers in TransformerLens's vocabulary:

    tokens = tok.to_tokens("The cat sat")                 # [1, pos] int32, BOS first
    tokens, mask = tok.to_tokens(["a", "longer text"], padding_side="left",
                                 return_mask=True)        # [2, pos] and [2, pos] bool
    tok.to_str_tokens("The cat")                          # ["<bos>", "The", " cat"]
    tok.to_string(tokens)                                 # ["The cat sat"]
    answer = tok.to_single_token(" Paris")                # an id, or a ValueError

`ByteTokenizer` (here) needs no training: every UTF-8 byte is a token,

    ids 0..255   the bytes themselves
    256          BOS (beginning of sequence / document separator)
    257          PAD

so it round-trips any text exactly, at the cost of length: one token per byte, about 4x
more tokens than a BPE tokenizer gives on natural text. `mechjax.data.hf_tokenizer` wraps
a `tokenizers` library tokenizer (a real model's `tokenizer.json`, or a BPE trained on
any corpus) behind the same interface, so toys and real models read the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..model.padding import pad_sequences

# Readable labels for the control bytes that have a conventional escape.
CONTROL_ESCAPES = {9: "\\t", 10: "\\n", 13: "\\r"}


class Tokenizer:
    """The interface every mechjax tokenizer provides; the helpers are written once here.

    A subclass provides
        vocab_size: the number of token ids, [0, vocab_size).
        bos_id, eos_id, pad_id: special ids (`eos_id`, and for some real tokenizers
            `bos_id`, may be None).
        cache_key: a string that names the encoding (text corpora cache by it).
        encode(text, bos=True) -> ids [pos] int32, BOS first if `bos`.
        decode(ids) -> str, special tokens skipped.
        token_str(id) -> a short readable label for one id (figures, tables).
    and may widen `special_ids` (by default BOS, EOS and PAD).
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    cache_key: str

    # ---------------------------------------------------------------- the primitives

    def encode(self, text: str, bos: bool = True) -> np.ndarray:
        """text -> ids [pos] int32, preceded by BOS if `bos`."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """ids [pos] -> text, special tokens skipped."""
        raise NotImplementedError

    def token_str(self, token_id: int) -> str:
        """A short readable label for one id."""
        raise NotImplementedError

    @property
    def special_ids(self) -> frozenset[int]:
        """The ids `to_string` skips and `to_str_tokens` labels by name."""
        return frozenset(i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None)

    def check_ids(self, ids) -> np.ndarray:
        """ids (any shape) as int64, checked to be integers in [0, vocab_size)."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); found {np.unique(bad)[:10].tolist()}"
            )
        return ids.astype(np.int64)

    # ---------------------------------------- the helpers, in TransformerLens's vocabulary

    def to_tokens(
        self,
        text: str | Sequence[str],
        *,
        prepend_bos: bool = True,
        padding_side: str = "right",
        return_mask: bool = False,
    ):
        """text or texts -> tokens [batch, pos] int32 (a single str gives batch 1).

        Texts of different lengths are padded with `pad_id` on `padding_side` ("right":
        tokens first, padding after; "left": padding first, so every last token lines
        up at pos -1). With `return_mask`, returns `(tokens, mask)`, mask [batch, pos]
        bool, True at real tokens. The mask is built from the lengths, not by comparing
        with `pad_id`: a real tokenizer may use one id for PAD, EOS and BOS (GPT-2's
        `<|endoftext|>`).
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("to_tokens needs at least one text, got an empty list")
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"to_tokens takes a str or a list of str, got {type(t).__name__}")
        rows = [np.asarray(self.encode(t, bos=prepend_bos), np.int32) for t in texts]
        if len({len(r) for r in rows}) > 1 and self.pad_id is None:
            raise ValueError(
                "these texts have different lengths and the tokenizer has no pad token; "
                "tokenize them one at a time or give the tokenizer a pad_token"
            )
        pad = -1 if self.pad_id is None else self.pad_id
        tokens, mask = pad_sequences(rows, pad, padding_side)
        return (tokens, mask) if return_mask else tokens

    def to_str_tokens(self, text_or_ids, *, prepend_bos: bool = True):
        """One string per token, as TransformerLens labels them.

        A str is encoded first (BOS first if `prepend_bos`); ids [pos] (or one id) are
        labeled as they are; a list of str, or ids [batch, pos], gives a list of lists.
        Each ordinary token is its own decoded text (" the" keeps its space; a token
        that is part of a UTF-8 character decodes to "\\ufffd"), so for text made of
        whole-character tokens the labels join back to the text. Special tokens are
        labeled by name ("<bos>", "<|endoftext|>").
        """
        if isinstance(text_or_ids, str):
            return self.label_ids(self.encode(text_or_ids, bos=prepend_bos))
        if isinstance(text_or_ids, list | tuple) and any(isinstance(t, str) for t in text_or_ids):
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in text_or_ids]
        ids = self.check_ids(text_or_ids)
        if ids.ndim == 2:
            return [self.label_ids(row) for row in ids]
        if ids.ndim > 2:
            raise ValueError(
                f"to_str_tokens takes ids [pos] or [batch, pos], got shape {ids.shape}"
            )
        return self.label_ids(ids.reshape(-1))

    def label_ids(self, ids) -> list[str]:
        """ids [pos] -> one string per token (see `to_str_tokens`)."""
        specials = self.special_ids
        return [
            self.token_str(i) if i in specials else self.decode([i])
            for i in self.check_ids(ids).reshape(-1).tolist()
        ]

    def to_string(self, ids):
        """ids [pos] -> str, or ids [batch, pos] -> list[str]; special tokens (BOS, EOS,
        padding) are skipped."""
        ids = self.check_ids(ids)
        if ids.ndim == 2:
            return [self.decode(row) for row in ids]
        if ids.ndim > 1:
            raise ValueError(f"to_string takes ids [pos] or [batch, pos], got shape {ids.shape}")
        return self.decode(ids.reshape(-1))

    def to_single_token(self, word: str) -> int:
        """The id of `word` if it encodes (without BOS) to exactly one token, else a
        ValueError naming the tokens it splits into. Answer words of a logit-difference
        metric must be single tokens; mind the leading space (" Paris", not "Paris")."""
        if not isinstance(word, str):
            raise ValueError(f"to_single_token takes a str, got {type(word).__name__}")
        ids = np.asarray(self.encode(word, bos=False))
        if len(ids) != 1:
            raise ValueError(
                f"{word!r} is {len(ids)} tokens {self.label_ids(ids)}; "
                "pick an answer word that is one token"
            )
        return int(ids[0])


@dataclasses.dataclass(frozen=True)
class ByteTokenizer(Tokenizer):
    """Bytes 0..255 as tokens, then `bos_id` (256) and `pad_id` (257); no EOS."""

    vocab_size: ClassVar[int] = 258
    bos_id: ClassVar[int] = 256
    pad_id: ClassVar[int] = 257
    eos_id: ClassVar[None] = None
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
        ids = self.check_ids(ids).reshape(-1)
        data = ids[ids < 256].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        """A short readable label for one id (figure and table labels).

        Printable ASCII is itself ("a", " ", "{"); tab, newline and carriage return are
        "\\t", "\\n", "\\r"; other bytes are "\\xNN"; specials are "<bos>" and "<pad>".
        """
        ids = self.check_ids(token_id)
        if ids.ndim != 0:
            raise ValueError(f"token_str takes one id, got shape {ids.shape}; map it over the ids")
        i = int(ids)
        if i == self.bos_id:
            return "<bos>"
        if i == self.pad_id:
            return "<pad>"
        if 0x20 <= i <= 0x7E:
            return chr(i)
        return CONTROL_ESCAPES.get(i, f"\\x{i:02x}")
