"""Tokenizers of the `tokenizers` library (HuggingFace's) behind mechjax's `Tokenizer`.

    tok = load_tokenizer("checkpoints/gemma-2-2b")     # the folder's tokenizer.json
    tok = train_bpe(texts, vocab_size=512)              # a BPE for a toy, trained here
    tok.save("runs/toy/")                               # tokenizer.json + tokenizer_config.json
    tok.to_tokens("The cat sat")                        # [1, pos] int32, BOS first

A real model's tokenizer and a toy's read the same: `HFTokenizer` has every helper of
`mechjax.data.tokenizer.Tokenizer` (`to_tokens`, `to_str_tokens`, `to_string`,
`to_single_token`), and serves as the tokenizer of a `TextCorpus`. Nothing here reaches
the network: `load_tokenizer` reads files of a folder only.

BOS is mechjax's to add, never the tokenizer's post-processor: `encode` asks `tokenizers`
for the text's tokens alone (`add_special_tokens=False`) and prepends `bos_id` when
asked, so `prepend_bos` means the same for every tokenizer, whether or not its
`tokenizer.json` adds BOS by itself (Gemma's does, GPT-2's does not). Padding and
truncation configured in a `tokenizer.json` are switched off: `to_tokens` pads, and
nothing is cut.

Special tokens come from `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`,
each a string or a dict with "content"), then `special_tokens_map.json`, then the ids of
`config.json` (`bos_token_id`, `eos_token_id`, `pad_token_id`, also under `text_config`).
A tokenizer without a pad token (GPT-2's) pads with EOS, TransformerLens's convention;
masks from `to_tokens(..., return_mask=True)` stay right because they come from lengths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .tokenizer import CONTROL_ESCAPES, Tokenizer

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MODEL_CONFIG_FILE = "config.json"
ROLES = ("bos", "eos", "pad")
# The byte-level alphabet: every byte is one of these 256 symbols before merges.
N_BYTES = 256


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (`backend`) with BOS, EOS and PAD named.

    backend: the `tokenizers.Tokenizer`; its padding and truncation are switched off.
    bos_token, eos_token, pad_token: token strings of the vocabulary, or None. Without
        a pad token, EOS pads (TransformerLens's convention for GPT-2).
    add_bos_token: whether the tokenizer's own post-processor adds BOS, as recorded in
        `tokenizer_config.json`; None reads it off the post-processor. mechjax's
        `encode` ignores the post-processor either way (see the module docstring); this
        is kept so that `save` writes it back.

    vocab_size counts the added tokens too (`len()` of a transformers tokenizer); a
    model's embedding may be larger (padded), never smaller.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool | None = None,
    ):
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        pad_token = eos_token if pad_token is None else pad_token
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self.id_of(bos_token, "bos_token")
        self.eos_id = self.id_of(eos_token, "eos_token")
        self.pad_id = self.id_of(pad_token, "pad_token")
        if add_bos_token is None:
            add_bos_token = self.bos_id is not None and backend.encode(
                "a", add_special_tokens=True
            ).ids[:1] == [self.bos_id]
        self.add_bos_token = bool(add_bos_token)
        added = backend.get_added_tokens_decoder()
        self._special_ids = frozenset(
            {int(i) for i, token in added.items() if token.special} | super().special_ids
        )

    def id_of(self, token: str | None, role: str = "token") -> int | None:
        """The id of a token string (None for None); a ValueError if it is not one token
        of the vocabulary."""
        if token is None:
            return None
        if not isinstance(token, str):
            raise ValueError(f"{role} must be a token string or None, got {token!r}")
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"{role} {token!r} is not a token of this tokenizer (vocabulary of "
                f"{self.vocab_size}); name one of its tokens, or None"
            )
        return int(token_id)

    @property
    def special_ids(self) -> frozenset[int]:
        """BOS, EOS, PAD and every token the tokenizer marks special."""
        return self._special_ids

    @functools.cached_property
    def cache_key(self) -> str:
        """`hf-` and a hash of the tokenizer's JSON and its BOS, EOS and PAD."""
        specials = [self.bos_token, self.eos_token, self.pad_token]
        text = json.dumps([self.backend.to_str(), specials])
        return "hf-" + hashlib.sha256(text.encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, pad={self.pad_token!r})"
        )

    # ---------------------------------------------------------------- the primitives

    def encode(self, text: str, bos: bool = True) -> np.ndarray:
        """text -> ids [pos] int32: the text's tokens (no post-processor), BOS first if
        `bos`."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        if bos and self.bos_id is None:
            raise ValueError(
                "this tokenizer has no BOS token; pass bos=False (prepend_bos=False), or "
                "name a bos_token in tokenizer_config.json"
            )
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if bos:
            ids = [self.bos_id, *ids]
        return np.asarray(ids, np.int32)

    def decode(self, ids) -> str:
        """ids [pos] -> text; special tokens (BOS, EOS, padding, ...) are skipped."""
        ids = self.check_ids(ids).reshape(-1).tolist()
        specials = self.special_ids
        return self.backend.decode([i for i in ids if i not in specials], skip_special_tokens=True)

    def token_str(self, token_id: int) -> str:
        """A short readable label for one id: a special token's own string ("<bos>"),
        else the token's decoded text with tab, newline and carriage return escaped
        (" the", "\\n"); a token that is part of a UTF-8 character is its raw vocabulary
        entry."""
        ids = self.check_ids(token_id)
        if ids.ndim != 0:
            raise ValueError(f"token_str takes one id, got shape {ids.shape}; map it over the ids")
        i = int(ids)
        piece = self.backend.id_to_token(i)
        if i in self.special_ids:
            return piece if piece is not None else f"<{i}>"
        text = self.backend.decode([i], skip_special_tokens=False)
        if (not text or "\ufffd" in text) and piece is not None:
            return piece
        return "".join(CONTROL_ESCAPES.get(ord(c), c) for c in text)

    # ---------------------------------------------------------------------- files

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`
        into `folder` (created if needed; a model's folder is the usual place), readable
        by `load_tokenizer` and by `transformers.AutoTokenizer.from_pretrained(folder)`.
        Existing tokenizer files are replaced only with `overwrite=True`. -> the folder."""
        folder = Path(folder)
        names = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
        existing = [name for name in names if (folder / name).exists()]
        if existing and not overwrite:
            raise ValueError(
                f"{folder} already has {', '.join(existing)}; pass overwrite=True to replace "
                "them, or save into another folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        specials = {
            f"{role}_token": token
            for role, token in zip(ROLES, (self.bos_token, self.eos_token, self.pad_token))
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        self.backend.save(str(folder / TOKENIZER_FILE))
        write_json(folder / TOKENIZER_CONFIG_FILE, config)
        write_json(folder / SPECIAL_TOKENS_FILE, {k: v for k, v in specials.items() if v})
        return folder


def load_tokenizer(folder: str | os.PathLike) -> HFTokenizer:
    """The tokenizer of a checkpoint folder: `folder/tokenizer.json` with the special
    tokens its config files name (see the module docstring). Reads files only."""
    import tokenizers

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a folder; pass the checkpoint folder that holds tokenizer.json"
        )
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder} has no {TOKENIZER_FILE}; save one with tokenizer.save(...) / "
            "save_pretrained, or pass tokens directly"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the library raises its own exception types
        raise ValueError(
            f"{path} is not a tokenizer the tokenizers library can read: {error}"
        ) from None
    vocab_size = backend.get_vocab_size(with_added_tokens=True)
    config = read_json(folder / TOKENIZER_CONFIG_FILE)
    special_map = read_json(folder / SPECIAL_TOKENS_FILE)
    model_config = read_json(folder / MODEL_CONFIG_FILE)
    text_config = model_config.get("text_config") or {}

    def token_for(role: str) -> str | None:
        for source, values in ((TOKENIZER_CONFIG_FILE, config), (SPECIAL_TOKENS_FILE, special_map)):
            token = token_content(values.get(f"{role}_token"))
            if token is not None:
                if backend.token_to_id(token) is None:
                    raise ValueError(
                        f"{folder / source}: {role}_token {token!r} is not in {TOKENIZER_FILE}'s "
                        f"vocabulary; fix the file or remove the entry"
                    )
                return token
        key = f"{role}_token_id"
        token_id = model_config.get(key)
        token_id = text_config.get(key) if token_id is None else token_id
        if isinstance(token_id, list):  # several EOS ids (Llama 3): the first is EOS
            token_id = token_id[0] if token_id else None
        if token_id is None:
            return None
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise ValueError(
                f"{folder / MODEL_CONFIG_FILE}: {key} must be an int, got {token_id!r}"
            )
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"{folder / MODEL_CONFIG_FILE}: {key} {token_id} is outside the tokenizer's "
                f"vocabulary [0, {vocab_size}); fix it, or name a {role}_token in "
                f"{TOKENIZER_CONFIG_FILE}"
            )
        return backend.id_to_token(token_id)

    add_bos = config.get("add_bos_token")
    return HFTokenizer(
        backend,
        bos_token=token_for("bos"),
        eos_token=token_for("eos"),
        pad_token=token_for("pad"),
        add_bos_token=add_bos if isinstance(add_bos, bool) else None,
    )


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    bos_token: str | None = "<bos>",
    eos_token: str | None = "<eos>",
    pad_token: str | None = "<pad>",
    digits_individually: bool = False,
    byte_level: bool = True,
) -> HFTokenizer:
    """A BPE tokenizer trained on `texts` with the `tokenizers` library; deterministic.

    vocab_size: the most tokens, special tokens included; the result has fewer when
        the texts run out of pairs to merge (its `vocab_size` says).
    bos_token, eos_token, pad_token: special tokens, ids 0, 1, 2 in that order (None
        leaves one out). The saved tokenizer's post-processor adds BOS, as Gemma's does,
        so a transformers tokenizer built from it prepends BOS by default.
    digits_individually: split every digit into its own token, as Gemma's tokenizer
        does (numbers then read digit by digit).
    byte_level: GPT-2's byte-level scheme: the 256 bytes are the base alphabet, so any
        text round-trips exactly. False: SentencePiece-like words ("▁" marks a space)
        over the characters seen in training; unseen characters become "<unk>".
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    if isinstance(texts, str | bytes):
        raise ValueError("texts must be an iterable of strings, not one string; wrap it in a list")
    specials = list(dict.fromkeys(t for t in (bos_token, eos_token, pad_token) if t is not None))
    if not byte_level:
        specials.append("<unk>")
    smallest = len(specials) + (N_BYTES if byte_level else 1)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        base = f"the {N_BYTES} bytes and " if byte_level else ""
        raise ValueError(
            f"vocab_size must be an int >= {smallest} ({base}{len(specials)} special tokens), "
            f"got {vocab_size!r}"
        )
    splits = [pre_tokenizers.Digits(individual_digits=True)] if digits_individually else []
    if byte_level:
        backend = tokenizers.Tokenizer(models.BPE())
        splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        splits.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"))
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        alphabet = []
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    seen = {"texts": 0, "chars": 0}

    def checked():
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"texts must be strings, got {type(text).__name__}")
            seen["texts"] += 1
            seen["chars"] += len(text)
            yield text

    backend.train_from_iterator(checked(), trainer)
    if seen["chars"] == 0:
        raise ValueError(f"no text to train on ({seen['texts']} texts, all empty)")
    if bos_token is not None:
        bos_id = backend.token_to_id(bos_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token}:1 $B:1",
            special_tokens=[(bos_token, bos_id)],
        )
    return HFTokenizer(
        backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        add_bos_token=bos_token is not None,
    )


def token_content(value: Any) -> str | None:
    """A special token as `tokenizer_config.json` writes it: a string, or a dict with
    "content" (a serialized AddedToken); anything else is None."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def read_json(path: Path) -> dict:
    """The object in a JSON file; {} when the file is missing."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); fix or remove it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
