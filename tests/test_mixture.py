"""The text + repeated-stretch mixture used by the main job's default preset."""

from __future__ import annotations

import numpy as np
import pytest

from mechjax.data import ByteTokenizer, TextCorpus
from mechjax.data.mixture import RepeatMixture


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "import", "return", "self", "def", "(", ")", ":"]
    for i in range(40):
        (root / f"f{i:02d}.py").write_text(" ".join(rng.choice(words, 400)))
    return TextCorpus.from_paths(root, ByteTokenizer(), n_ctx=48, eval_every=5, cache=False)


def _is_tiled(row: np.ndarray, length: int) -> bool:
    body = row[1:]
    return bool(np.array_equal(body[length:], body[:-length]))


def test_a_fraction_of_rows_are_stretches_of_their_own_text_tiled(corpus):
    mix = RepeatMixture(corpus, fraction=0.5, min_len=4, max_len=10)
    tokens = np.concatenate([mix.batch(0, step, 64) for step in range(20)])
    plain = np.concatenate([corpus.batch(0, step, 64) for step in range(20)])
    changed = (tokens != plain).any(axis=1)
    assert 0.42 < changed.mean() < 0.58  # 1280 rows, binomial sd 0.014
    for row, source in zip(tokens[changed], plain[changed]):
        length = next(n for n in range(4, 11) if _is_tiled(row, n))
        np.testing.assert_array_equal(row[1 : 1 + length], source[1 : 1 + length])
    np.testing.assert_array_equal(tokens[~changed], plain[~changed])
    assert (tokens[:, 0] == corpus.bos_id).all()


def test_batches_and_eval_batches_are_deterministic(corpus):
    mix = RepeatMixture(corpus, fraction=0.3)
    np.testing.assert_array_equal(mix.batch(3, 7, 16), mix.batch(3, 7, 16))
    assert not np.array_equal(mix.batch(3, 7, 16), mix.batch(3, 8, 16))
    first, again = mix.eval_batches(2, 8), mix.eval_batches(2, 8)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (2, 8, 48)
    held_out = corpus.eval_batches(2, 8)
    assert (first != held_out).any()  # mixed like training
    assert "30%" in mix.describe() and "mixture" in mix.describe()


@pytest.mark.parametrize(
    "options", [dict(fraction=1.5), dict(min_len=0), dict(min_len=9, max_len=5), dict(max_len=48)]
)
def test_bad_options(corpus, options):
    with pytest.raises(ValueError):
        RepeatMixture(corpus, **options)


def test_random_segments_use_only_tokens_seen_in_the_text(corpus):
    mix = RepeatMixture(corpus, fraction=1.0, min_len=4, max_len=10, segments="random")
    tokens = mix.batch(1, 2, 32)
    support = set(mix.support.tolist())
    assert corpus.bos_id not in support and len(support) < 40  # a handful of letters and symbols
    for row in tokens:
        assert any(_is_tiled(row, n) for n in range(4, 11))
        assert set(row[1:].tolist()) <= support
    with pytest.raises(ValueError, match="segments"):
        RepeatMixture(corpus, segments="words")
