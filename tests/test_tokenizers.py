"""Tokenizers: one interface for the byte tokenizer, a BPE trained here and a checkpoint
folder's tokenizer.json.

References are independent of mechjax: the `tokenizers` library reading the saved
`tokenizer.json`, and `transformers` (`PreTrainedTokenizerFast`, `AutoTokenizer`) reading
the saved folder, with their own padding, attention masks and per-token decoding (the
way TransformerLens labels tokens).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mechjax.data as md

WORDS = "the cat sat on mat dog ran far a big small red house tree river over under".split()
TEXTS_FOR_CHECKS = [
    "The cat sat on the mat.",
    "a big red dog ran over 12345 trees\n\tand 67 rivers",
    "héllo wörld ✓ — naïve café 日本",
    "",
    "  leading and trailing spaces  ",
]


def corpus_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Generated sentences with words, numbers, punctuation and a little non-ASCII."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randrange(len(words)), str(rng.choice([12345, 42, 7, 2024, 31])))
        texts.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ", café.\n"]))
    return texts


@pytest.fixture(scope="module")
def bpe():
    return md.train_bpe(corpus_texts(), 320)


@pytest.fixture(scope="module")
def saved(bpe, tmp_path_factory):
    return bpe.save(tmp_path_factory.mktemp("tok") / "model")


@pytest.fixture(scope="module")
def hf(saved):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(saved)


# ------------------------------------------------------------------ trained BPE vs references


def test_trained_bpe_shape_and_determinism(bpe):
    assert bpe.vocab_size == 320
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    assert bpe.to_single_token("<bos>") == bpe.bos_id  # special tokens in text stay whole
    again = md.train_bpe(corpus_texts(), 320)
    assert again.backend.to_str() == bpe.backend.to_str()
    assert again.cache_key == bpe.cache_key and bpe.cache_key.startswith("hf-")
    other = md.train_bpe(corpus_texts(seed=1), 320)
    assert other.cache_key != bpe.cache_key


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=80))
def test_bpe_round_trips_any_text(bpe, text):
    ids = bpe.encode(text)
    assert ids.dtype == np.int32 and ids[0] == bpe.bos_id
    assert bpe.decode(ids) == text == bpe.to_string(ids)


def test_ids_match_tokenizers_and_transformers(bpe, saved, hf):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    reference = tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert len(hf) == bpe.vocab_size
    for text in TEXTS_FOR_CHECKS:
        body = reference.encode(text, add_special_tokens=False).ids
        assert bpe.encode(text, bos=False).tolist() == body
        assert fast(text, add_special_tokens=False).input_ids == body
        assert hf(text, add_special_tokens=False).input_ids == body
        # the saved post-processor adds BOS, so transformers' default matches to_tokens
        assert hf(text).input_ids == [hf.bos_token_id, *body]
        np.testing.assert_array_equal(bpe.to_tokens(text), [[0, *body]])
        assert bpe.to_string(bpe.encode(text)) == hf.decode([0, *body], skip_special_tokens=True)


def test_str_tokens_are_transformers_per_token_decoding(bpe, hf):
    for text in TEXTS_FOR_CHECKS:
        ids = hf(text).input_ids
        # TransformerLens's to_str_tokens: batch_decode of one-token sequences
        expected = hf.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
        assert bpe.to_str_tokens(text) == expected
        assert bpe.to_str_tokens(np.array(ids)) == expected
        assert bpe.to_str_tokens(text)[0] == "<bos>"
    ascii_text = "The cat sat on the mat, 42 times!\n"
    labels = bpe.to_str_tokens(ascii_text, prepend_bos=False)
    assert "".join(labels) == ascii_text and " cat" in labels and len(labels) < len(ascii_text)
    assert bpe.to_str_tokens([ascii_text, "a"]) == [
        bpe.to_str_tokens(ascii_text),
        ["<bos>", "a"],
    ]
    assert bpe.to_str_tokens(bpe.to_tokens(["a", "a cat"])) == [
        ["<bos>", "a", "<pad>"],
        ["<bos>", "a", " cat"],
    ]
    assert bpe.token_str(bpe.encode("\n", bos=False)[0]) == "\\n"


@pytest.mark.parametrize("side", ["right", "left"])
def test_ragged_to_tokens_pads_like_transformers(bpe, hf, side):
    texts = ["The cat", "a big red dog ran over the house", "", "café"]
    tokens, mask = bpe.to_tokens(texts, padding_side=side, return_mask=True)
    hf.padding_side = side
    batch = hf(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(tokens, batch["input_ids"])
    np.testing.assert_array_equal(mask, batch["attention_mask"].astype(bool))
    assert tokens.dtype == np.int32 and mask.dtype == bool
    lengths = [len(bpe.encode(t)) for t in texts]
    np.testing.assert_array_equal(mask.sum(1), lengths)
    assert bpe.to_string(tokens) == texts
    no_bos = bpe.to_tokens(texts, prepend_bos=False, padding_side=side)
    assert no_bos.shape == (4, max(lengths) - 1)
    with pytest.raises(ValueError, match="padding_side"):
        bpe.to_tokens(texts, padding_side="middle")
    with pytest.raises(ValueError, match="at least one text"):
        bpe.to_tokens([])


def test_single_token(bpe):
    cat = bpe.to_single_token(" cat")
    assert bpe.encode(" cat", bos=False).tolist() == [cat] and bpe.decode([cat]) == " cat"
    pieces = bpe.to_str_tokens(" catsat", prepend_bos=False)
    assert pieces[0] == " cat" and "".join(pieces) == " catsat"
    message = f"' catsat' is {len(pieces)} tokens {pieces}; pick an answer word that is one token"
    with pytest.raises(ValueError) as error:
        bpe.to_single_token(" catsat")
    assert str(error.value) == message
    with pytest.raises(ValueError, match="is 0 tokens"):
        bpe.to_single_token("")


def test_digits_individually():
    texts = corpus_texts()
    merged = md.train_bpe(texts, 320)
    split = md.train_bpe(texts, 320, digits_individually=True)
    assert len(merged.encode("12345", bos=False)) < 5  # a frequent number becomes merges
    assert split.to_str_tokens("12345", prepend_bos=False) == list("12345")
    assert split.to_str_tokens(" 2024 cats", prepend_bos=False)[:5] == [" ", "2", "0", "2", "4"]
    assert split.decode(split.encode("x 12345 y")) == "x 12345 y"


def test_character_level_bpe():
    tok = md.train_bpe(corpus_texts(), 150, byte_level=False)
    assert tok.vocab_size == 150
    text = "The big  cat sat, 42 times."
    assert tok.to_string(tok.to_tokens(text)) == [text] and tok.decode(tok.encode(text)) == text
    labels = tok.to_str_tokens("ran over", prepend_bos=False)
    assert labels[-1] == " over" and "".join(labels) == "ran over"  # "▁over" decodes to " over"
    unseen = tok.encode("✓", bos=False)
    assert tok.to_str_tokens(unseen) == ["<unk>"] and tok.decode(unseen) == ""


def test_train_bpe_errors():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 259"):
        md.train_bpe(["text"], 100)
    with pytest.raises(ValueError, match="not one string"):
        md.train_bpe("a single string", 300)
    with pytest.raises(ValueError, match="must be strings"):
        md.train_bpe(["ok", 3], 300)
    with pytest.raises(ValueError, match="no text to train on"):
        md.train_bpe(["", ""], 300)


# --------------------------------------------------------------------------- byte tokenizer


def test_byte_tokenizer_through_the_same_helpers():
    tok = md.ByteTokenizer()
    assert isinstance(tok, md.Tokenizer) and tok.eos_id is None
    tokens, mask = tok.to_tokens(["ab", "c"], padding_side="left", return_mask=True)
    np.testing.assert_array_equal(tokens, [[256, 97, 98], [257, 256, 99]])
    np.testing.assert_array_equal(mask, [[True, True, True], [False, True, True]])
    assert tok.to_string(tokens) == ["ab", "c"] and tok.to_string(tokens[0]) == "ab"
    assert tok.to_str_tokens("a b\n") == ["<bos>", "a", " ", "b", "\n"]
    assert tok.to_str_tokens("é", prepend_bos=False) == ["\ufffd", "\ufffd"]
    assert tok.to_str_tokens(tokens) == [["<bos>", "a", "b"], ["<pad>", "<bos>", "c"]]
    assert tok.to_single_token("a") == 97
    with pytest.raises(ValueError, match=r"'é' is 2 tokens"):
        tok.to_single_token("é")
    with pytest.raises(ValueError, match="258"):
        tok.to_str_tokens([300])


# ---------------------------------------------------------------------------- folders


def test_save_and_load_round_trip(bpe, saved, tmp_path):
    loaded = md.load_tokenizer(saved)
    assert isinstance(loaded, md.HFTokenizer)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (0, 1, 2, 320)
    assert loaded.add_bos_token and loaded.cache_key == bpe.cache_key
    for text in TEXTS_FOR_CHECKS:
        np.testing.assert_array_equal(loaded.encode(text), bpe.encode(text))
    with pytest.raises(ValueError, match="already has tokenizer.json.*overwrite=True"):
        bpe.save(saved)
    other = md.train_bpe(corpus_texts(seed=3), 300)
    assert other.save(saved, overwrite=True) == saved
    assert md.load_tokenizer(saved).cache_key == other.cache_key
    bpe.save(saved, overwrite=True)  # leave the module's folder as it was


def test_gpt2_style_folder_pads_with_eos(tmp_path):
    tok = md.train_bpe(
        corpus_texts(), 300, bos_token=None, eos_token="<|endoftext|>", pad_token=None
    )
    assert tok.bos_id is None and tok.pad_id == tok.eos_id
    with pytest.raises(ValueError, match="no BOS token"):
        tok.to_tokens("the cat")
    folder = tok.save(tmp_path / "gpt2ish")
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").unlink()
    gpt2 = md.load_tokenizer(folder)
    assert gpt2.bos_id == gpt2.eos_id == gpt2.pad_id == gpt2.to_single_token("<|endoftext|>")
    assert not gpt2.add_bos_token
    tokens, mask = gpt2.to_tokens(["the cat sat", "a"], padding_side="left", return_mask=True)
    assert (tokens[1, : int((~mask[1]).sum()) + 1] == gpt2.bos_id).all()  # pad == BOS here
    np.testing.assert_array_equal(mask.sum(1), [len(gpt2.encode("the cat sat")), 2])
    assert gpt2.to_string(tokens) == ["the cat sat", "a"]


def test_special_tokens_from_every_config_file(tmp_path):
    tok = md.train_bpe(corpus_texts(), 300, bos_token="<s>", eos_token="</s>", pad_token="<p>")
    folder = tok.save(tmp_path / "m")
    # dicts with "content", as transformers serializes AddedToken
    config = {"bos_token": {"content": "<s>", "special": True}, "eos_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "config.json").write_text(json.dumps({"text_config": {"pad_token_id": 2}}))
    loaded = md.load_tokenizer(folder)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 2)
    assert loaded.add_bos_token  # read off the post-processor: the config does not say


def test_load_errors(saved, tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        md.load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty has no tokenizer.json; save one with"):
        md.load_tokenizer(tmp_path / "empty")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 0, "pad_token_id": 320}))
    with pytest.raises(ValueError, match=r"pad_token_id 320 is outside .*\[0, 320\)"):
        md.load_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({"pad_token_id": -1}))
    with pytest.raises(ValueError, match="pad_token_id -1 is outside"):
        md.load_tokenizer(folder)
    (folder / "config.json").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nope>"}))
    with pytest.raises(ValueError, match="pad_token '<nope>' is not in tokenizer.json"):
        md.load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        md.load_tokenizer(folder)
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizer the tokenizers library can read"):
        md.load_tokenizer(folder)


# ------------------------------------------------------------------------- text corpora


def test_text_corpus_with_a_bpe(bpe, tmp_path):
    import tokenizers

    root = tmp_path / "corpus"
    root.mkdir()
    texts = corpus_texts(30, seed=5)
    for i, text in enumerate(texts):
        (root / f"doc{i:02d}.txt").write_text(text * 3, "utf-8")
    cache = tmp_path / "cache"
    corpus = md.TextCorpus.from_paths(root, bpe, n_ctx=16, eval_every=5, cache_dir=cache)
    assert corpus.vocab_size == 320 and corpus.bos_id == 0 and corpus.n_files == 30
    reference = tokenizers.Tokenizer.from_str(bpe.backend.to_str())
    expected = [
        [0, *reference.encode(text * 3, add_special_tokens=False).ids]
        for i, text in enumerate(texts)
        if (i + 1) % 5 != 0
    ]
    np.testing.assert_array_equal(corpus.train_tokens, np.concatenate(expected))
    batch = corpus.batch(0, 1, 4)
    assert batch.shape == (4, 16) and (batch[:, 0] == 0).all()
    assert corpus.token_str(batch[0, 0]) == "<bos>"
    again = md.TextCorpus.from_paths(root, bpe, n_ctx=16, eval_every=5, cache_dir=cache)
    np.testing.assert_array_equal(again.train_tokens, corpus.train_tokens)
    assert len(list(cache.glob("*.npz"))) == 1  # the second read came from the cache
    md.TextCorpus.from_paths(root, n_ctx=16, eval_every=5, cache_dir=cache)  # bytes
    assert len(list(cache.glob("*.npz"))) == 2  # a different tokenizer, a different key
