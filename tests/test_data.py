"""Tests for mechjax.data: byte tokenizer, synthetic tasks, text corpora, registry.

References are independent of the code under test: Python's own UTF-8 codec for the
tokenizer, plain Python loops for the task structure, numpy's eigen-decomposition for
stationary distributions, and binomial z-scores for sampled transition frequencies.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechjax import data as md

TASKS = {
    "repeated": md.RepeatedSegments(),
    "trigger-bigrams": md.TriggerBigrams(),
    "markov": md.RandomMarkov(),
}


# ---------------------------------------------------------------------------- tokenizer


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_byte_round_trip(text):
    tok = md.ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids[0] == tok.bos_id == 256
    assert ids[1:].tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=False).tolist() == list(text.encode("utf-8"))


def test_byte_tokenizer_specials_and_labels():
    tok = md.ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.pad_id) == (258, 256, 257)
    # specials are skipped, invalid UTF-8 becomes U+FFFD
    assert tok.decode([256, 104, 105, 257, 257]) == "hi"
    assert tok.decode([0xFF, 65]) == "\ufffdA"
    labels = {65: "A", 32: " ", 10: "\\n", 9: "\\t", 11: "\\x0b", 0xE2: "\\xe2", 256: "<bos>"}
    for token_id, label in labels.items():
        assert tok.token_str(token_id) == label
    assert tok.token_str(257) == "<pad>"
    with pytest.raises(ValueError, match="258"):
        tok.decode([258])
    with pytest.raises(ValueError, match="258"):
        tok.token_str(-1)
    with pytest.raises(ValueError, match="str or bytes"):
        tok.encode(123)


# ------------------------------------------------------------------------ synthetic tasks


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_determinism_shapes_ranges(name):
    task = TASKS[name]
    a = task.batch(7, 3, 16)
    assert a.shape == (16, task.n_ctx) and a.dtype == np.int32
    np.testing.assert_array_equal(a, task.batch(7, 3, 16))
    np.testing.assert_array_equal(a, md.make_dataset(name).batch(7, 3, 16))  # a fresh object
    assert not np.array_equal(a, task.batch(7, 4, 16))
    assert not np.array_equal(a, task.batch(8, 3, 16))
    # ids in range; BOS first and nowhere else
    assert a.min() >= 0 and a.max() < task.vocab_size
    assert (a[:, 0] == task.bos_id).all() and (a[:, 1:] != task.bos_id).all()
    # a generator is used as given
    b = task.batch(np.random.default_rng([7, 3]), 0, 16)
    np.testing.assert_array_equal(a, b)
    # evaluation batches are fixed and are not training batches
    ev = task.eval_batches(3, 16)
    assert ev.shape == (3, 16, task.n_ctx) and ev.dtype == np.int32
    np.testing.assert_array_equal(ev, task.eval_batches(3, 16))
    assert not any(np.array_equal(ev[i], task.batch(0, i, 16)) for i in range(3))
    assert task.token_str(task.bos_id) == "<bos>" and task.token_str(5) == "5"
    assert str(task.vocab_size) in task.describe()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_bad_arguments(name):
    task = TASKS[name]
    for args, match in [((0, 0, 0), "batch_size"), ((0, -1, 4), "step"), ((-1, 0, 4), "seed")]:
        with pytest.raises(ValueError, match=match):
            task.batch(*args)
    with pytest.raises(ValueError, match="vocab_size"):
        type(task)(vocab_size=2)


def test_repeated_segments_repeat():
    task = md.RepeatedSegments()
    tokens, info = task.batch_with_info(0, 0, 256)
    prefix, seg = info["prefix_len"], info["segment_len"]
    # every allowed length occurs in 256 rows, nothing outside the range
    assert set(prefix.tolist()) == set(range(0, 9))
    assert set(seg.tolist()) == set(range(8, 31))
    for row, p, s in zip(tokens, prefix, seg):
        start = 1 + p  # BOS, then the prefix
        segment = row[start : start + s]
        expected = np.resize(segment, task.n_ctx - start)  # the segment tiled to the end
        np.testing.assert_array_equal(row[start:], expected)
        i = np.arange(start + s, task.n_ctx)
        np.testing.assert_array_equal(row[i], row[i - s])
    # tokens uniform over the 63 values: chi-square over the first copy of each segment
    tokens, info = task.batch_with_info(1, 0, 2048)
    rows = zip(tokens, info["prefix_len"], info["segment_len"])
    first_copies = np.concatenate([r[1 + p : 1 + p + s] for r, p, s in rows])
    counts = np.bincount(first_copies, minlength=task.n_values)
    expected = len(first_copies) / task.n_values
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 62 + 5 * np.sqrt(2 * 62)  # mean 62, sd sqrt(124)
    with pytest.raises(ValueError, match="n_ctx"):
        md.RepeatedSegments(n_ctx=39)


def test_stationary_distribution_matches_eigenvector():
    rng = np.random.default_rng(0)
    transition = rng.dirichlet(np.ones(7), size=(5, 7))
    pi = md.stationary_distribution(transition)
    for p, t in zip(pi, transition):
        values, vectors = np.linalg.eig(t.T)  # left eigenvector for eigenvalue 1
        ref = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        np.testing.assert_allclose(p, ref / ref.sum(), atol=1e-12)


def _chi_square_sd(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square of transition counts [..., k, k] against row probabilities,
    standardised: (X^2 - dof) / sqrt(2 dof), about N(0, 1) if the counts follow probs.
    Per row, cells expected below 5 are pooled into one (the usual validity rule)."""
    stat, dof = 0.0, 0
    for obs_row, p in zip(counts.reshape(-1, counts.shape[-1]), probs.reshape(-1, probs.shape[-1])):
        exp_row = obs_row.sum() * p
        big = exp_row >= 5
        obs = np.append(obs_row[big], obs_row[~big].sum())
        exp = np.append(exp_row[big], exp_row[~big].sum())
        obs, exp = obs[exp > 0], exp[exp > 0]
        stat += ((obs - exp) ** 2 / exp).sum()
        dof += len(exp) - 1
    return (stat - dof) / np.sqrt(2 * dof)


def test_trigger_bigrams_structure():
    task = md.TriggerBigrams()
    tokens, info = task.batch_with_info(3, 0, 512)
    targets, triggers = info["targets"], task.triggers
    assert targets.shape == (512, task.n_triggers)
    assert not np.isin(targets, triggers).any()
    # triggers are the most frequent values under the background's stationary law
    pi = md.stationary_distribution(task.background)
    assert pi[triggers].min() >= np.delete(pi, triggers).max()
    np.testing.assert_allclose(task.background.sum(1), 1.0, atol=1e-12)
    # same background for the same task seed, another for another seed
    np.testing.assert_array_equal(md.TriggerBigrams().background, task.background)
    assert not np.allclose(md.TriggerBigrams(seed=1).background, task.background)
    # every occurrence of a trigger is followed by that sequence's target (plain loops)
    recurring = 0
    for row, target in zip(tokens, targets):
        for k, trig in enumerate(triggers):
            followers = {int(row[i + 1]) for i in range(1, task.n_ctx - 1) if row[i] == trig}
            assert followers <= {int(target[k])}
            recurring += int(np.sum(row[1:-1] == trig) >= 2)
    assert recurring > 0.8 * targets.size  # triggers recur, so induction can pay off
    # targets are sequence-specific: they vary across sequences
    assert all(len(np.unique(targets[:, k])) > 20 for k in range(task.n_triggers))

    # non-trigger transitions follow the background (pooled over a large batch)
    body = task.batch(4, 0, 2048)[:, 1:]
    counts = np.zeros((task.n_values, task.n_values))
    np.add.at(counts, (body[:, :-1].ravel(), body[:, 1:].ravel()), 1)
    rows = np.setdiff1d(np.arange(task.n_values), triggers)
    assert abs(_chi_square_sd(counts[rows], task.background[rows])) < 4
    other = md.TriggerBigrams(seed=1).background  # the test has power
    assert _chi_square_sd(counts[rows], other[rows]) > 100


def test_random_markov_frequencies_match_chain():
    task = md.RandomMarkov(n_states=3, n_ctx=3001)
    tokens, info = task.batch_with_info(5, 0, 16)
    transition = info["transition"]  # [batch, 3, 3]
    np.testing.assert_allclose(transition.sum(-1), 1.0, atol=1e-12)
    assert tokens[:, 1:].max() < 3
    body = tokens[:, 1:]
    counts = np.zeros((16, 3, 3))
    for b in range(16):
        np.add.at(counts[b], (body[b, :-1], body[b, 1:]), 1)
    # chi-square over 16 chains x 3 rows (~3,000 transitions per chain)
    assert abs(_chi_square_sd(counts, transition)) < 4
    # the test has power: another sequence's chain is rejected
    assert _chi_square_sd(counts, np.roll(transition, 1, axis=0)) > 100
    # the chains differ from sequence to sequence
    assert np.abs(transition[0] - transition[1]).max() > 0.05


# ------------------------------------------------------------------------------ text


def _write_tree(root: Path, n: int = 45) -> list[Path]:
    """n UTF-8 text files in nested folders, plus files that must be skipped."""
    files = []
    for i in range(n):
        path = root / f"part{i % 3}" / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"document {i}: " + "héllo wörld ✓ " * (3 + i % 5) + "\n", "utf-8")
        files.append(path)
    (root / "binary.bin").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x80]) * 20)  # not UTF-8
    (root / "empty.txt").write_text("")
    (root / ".hidden.txt").write_text("never read")
    return sorted(files, key=lambda p: p.resolve().as_posix())


def test_text_corpus_split_and_streams(tmp_path):
    files = _write_tree(tmp_path / "corpus")
    tok = md.ByteTokenizer()
    corpus = md.TextCorpus.from_paths(tmp_path / "corpus", n_ctx=24, cache=False)
    again = md.TextCorpus.from_paths(tmp_path / "corpus", tok, 24, cache=False)
    assert corpus.vocab_size == 258 and corpus.bos_id == 256 and corpus.n_files == 45
    # every 20th file by sorted path is held out: files 20 and 40 (1-based)
    names = [str(p.resolve()) for p in files]
    assert corpus.eval_files == (names[19], names[39])
    assert corpus.train_files == tuple(n for i, n in enumerate(names) if i not in (19, 39))
    assert not set(corpus.train_files) & set(corpus.eval_files)
    assert corpus.train_files == again.train_files and corpus.eval_files == again.eval_files
    # streams: BOS + the file's bytes, in file order (reference: Python's file reading)
    for split_files, stream in [
        (corpus.train_files, corpus.train_tokens),
        (corpus.eval_files, corpus.eval_tokens),
    ]:
        ref = np.concatenate([[256, *Path(f).read_bytes()] for f in split_files])
        np.testing.assert_array_equal(stream, ref)
    assert corpus.train_tokens.dtype == np.uint16
    # a batch: BOS + a window of the training stream; deterministic per (seed, step)
    batch = corpus.batch(0, 5, 8)
    assert batch.shape == (8, 24) and batch.dtype == np.int32 and (batch[:, 0] == 256).all()
    np.testing.assert_array_equal(batch, again.batch(0, 5, 8))
    assert not np.array_equal(batch, corpus.batch(0, 6, 8))
    windows = np.lib.stride_tricks.sliding_window_view(corpus.train_tokens.astype(np.int32), 23)
    for row in batch:
        assert (windows == row[1:]).all(1).any()
    # evaluation windows come from the held-out stream only, and are fixed
    ev = corpus.eval_batches(2, 3)
    assert ev.shape == (2, 3, 24)
    np.testing.assert_array_equal(ev, again.eval_batches(2, 3))
    eval_windows = np.lib.stride_tricks.sliding_window_view(corpus.eval_tokens.astype(int), 23)
    for row in ev.reshape(-1, 24):
        assert (eval_windows == row[1:]).all(1).any()
    assert "45 files" in corpus.describe()
    assert tok.decode(batch[0])  # decodes to text


def test_text_corpus_errors(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"\xff\xfe\xfa" * 10)
    with pytest.raises(ValueError, match="no readable text under .*bin"):
        md.TextCorpus.from_paths(tmp_path / "bin", cache=False)
    with pytest.raises(ValueError, match="does not exist"):
        md.TextCorpus.from_paths(tmp_path / "missing", cache=False)
    (tmp_path / "one.txt").write_text("short text, one file\n" * 5)
    corpus = md.make_dataset(f"text:{tmp_path / 'one.txt'}", n_ctx=16, cache=False)
    assert corpus.batch(1, 1, 2).shape == (2, 16)
    with pytest.raises(ValueError, match="evaluation split has 0 tokens"):
        corpus.eval_batches(1, 2)  # one file: nothing held out
    with pytest.raises(ValueError, match="fewer than one window"):
        md.TextCorpus.from_paths(tmp_path / "one.txt", n_ctx=1000, cache=False)
    with pytest.raises(ValueError, match="eval_every"):
        md.TextCorpus.from_paths(tmp_path / "one.txt", eval_every=1, cache=False)


class _CountingTokenizer(md.ByteTokenizer):
    calls = 0

    def encode(self, text, bos=True):
        type(self).calls += 1
        return super().encode(text, bos)


def test_text_cache(tmp_path):
    files = _write_tree(tmp_path / "corpus", n=25)
    cache_dir = tmp_path / "cache"
    tok = _CountingTokenizer()
    first = md.TextCorpus.from_paths(tmp_path / "corpus", tok, 16, cache_dir=cache_dir)
    assert _CountingTokenizer.calls == 25 and len(list(cache_dir.glob("*.npz"))) == 1
    second = md.TextCorpus.from_paths(tmp_path / "corpus", tok, 16, cache_dir=cache_dir)
    assert _CountingTokenizer.calls == 25  # served from the cache
    np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
    np.testing.assert_array_equal(first.eval_tokens, second.eval_tokens)
    assert first.train_files == second.train_files and first.eval_files == second.eval_files
    # a changed file changes the key
    files[0].write_text("changed, and longer than before " * 10)
    third = md.TextCorpus.from_paths(tmp_path / "corpus", tok, 16, cache_dir=cache_dir)
    assert _CountingTokenizer.calls == 50
    assert third.train_tokens[1:].tobytes() != first.train_tokens[1:].tobytes()
    # an unwritable cache location (below a regular file) only costs the speed-up
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fallback = md.TextCorpus.from_paths(tmp_path / "corpus", n_ctx=16, cache_dir=blocker / "c")
    np.testing.assert_array_equal(fallback.train_tokens, third.train_tokens)


def test_stdlib_corpus(tmp_path):
    root, files = md.stdlib_files()
    assert len(files) > 100
    assert all(f.suffix == ".py" for f in files)
    excluded = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    assert not any(excluded & set(f.relative_to(root).parts[:-1]) for f in files)
    assert root / "os.py" in files and root / "json" / "decoder.py" in files
    corpus = md.stdlib_corpus(n_ctx=128, cache_dir=tmp_path)  # ~0.5 s for ~12 MB
    assert corpus.n_files > 100 and corpus.n_bytes > 1_000_000
    assert corpus.n_files <= len(files)
    assert f"{corpus.n_files} files" in corpus.describe()
    assert f"{corpus.n_bytes:,} bytes" in corpus.describe()
    assert not set(corpus.train_files) & set(corpus.eval_files)
    assert len(corpus.eval_files) == corpus.n_files // 20
    # the stream is the source text itself
    os_py = str((root / "os.py").resolve())
    assert os_py in corpus.train_files + corpus.eval_files
    source = (root / "os.py").read_bytes()
    stream = corpus.train_tokens if os_py in corpus.train_files else corpus.eval_tokens
    assert source[:200] in stream.astype(np.uint8).tobytes()  # BOS (256) wraps to 0
    tokens = corpus.batch(0, 0, 4)
    assert tokens.shape == (4, 128) and tokens.max() < 258


# ---------------------------------------------------------------------------- registry


def test_registry(tmp_path):
    assert {"repeated", "trigger-bigrams", "markov", "stdlib", "text:PATH"} <= set(md.DATASET_NAMES)
    task = md.make_dataset("repeated", n_ctx=48, min_len=4, max_len=12)
    assert isinstance(task, md.RepeatedSegments) and task.n_ctx == 48
    assert [md.make_dataset(n).name for n in TASKS] == list(TASKS)
    assert md.make_dataset("markov", n_states=4).n_states == 4
    assert md.make_dataset("trigger-bigrams", seed=2) == md.TriggerBigrams(seed=2)
    with pytest.raises(ValueError, match="valid names: repeated, trigger-bigrams, markov"):
        md.make_dataset("tiled")
    with pytest.raises(ValueError, match="no option.*segment_length.*valid options"):
        md.make_dataset("repeated", segment_length=4)
    with pytest.raises(ValueError, match="valid options"):
        md.make_dataset("stdlib", suffixes=(".txt",))
    with pytest.raises(ValueError, match="needs a path"):
        md.make_dataset("text:")
    _write_tree(tmp_path, n=5)
    text = md.make_dataset(f"text:{tmp_path}", n_ctx=16, eval_every=2, cache=False)
    for ds in (task, text):
        for attr in ("vocab_size", "bos_id", "n_ctx", "batch", "eval_batches", "describe"):
            assert hasattr(ds, attr)
        assert ds.batch(0, 0, 2).shape == (2, ds.n_ctx)
    assert os.fspath(tmp_path) in text.describe()
