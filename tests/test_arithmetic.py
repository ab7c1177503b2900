"""The single-digit arithmetic task and block removal (the layer-removal study, seed 000).

References: the problem set is checked against Python's own integer/rational arithmetic
and counts derived by hand; block removal through the ablation machinery is checked
against the residual stream (`resid_post == resid_pre` at the removed layer) and
against the source study's own method, a backbone assembled without that layer.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.causal.ablation import ablation_edits
from mechjax.data import Arithmetic, ByteTokenizer, make_dataset
from mechjax.data.arithmetic import OPERATIONS, accuracy_by_operation, all_problems
from mechjax.model.generate import greedy_next_tokens

TOK = ByteTokenizer()


def _reference(a: int, op: str, b: int):
    """The exact value of `a op b` (a Fraction for division; None for division by 0)."""
    if op == "/":
        return None if b == 0 else Fraction(a, b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


# -- the problem set ------------------------------------------------------------------------


def test_problem_set_is_every_single_digit_problem_and_only_those():
    expected = set()
    for op in OPERATIONS:
        for a in range(10):
            for b in range(10):
                value = _reference(a, op, b)
                if value is not None and value == int(value) and 0 <= value <= 9:
                    expected.add((a, op, b, int(value)))
    got = [(p.a, p.op, p.b, p.answer) for p in all_problems()]
    assert len(got) == len(set(got))
    assert set(got) == expected
    for a, op, b, answer in got:
        assert 0 <= answer <= 9
        assert _reference(a, op, b) == answer


def test_counts_per_operation():
    # by hand: a+b<=9 and a-b>=0 each have 10+9+...+1 = 55 pairs; a*b<=9 has the 19 pairs
    # with a zero plus sum_{a=1..9} floor(9/a) = 23; exact a/b has 9 (a=0) plus
    # sum_{a=1..9} (divisors of a) = 1+2+2+3+2+4+2+4+3 = 23
    counts = Counter(p.op for p in all_problems())
    assert counts == {"+": 55, "-": 55, "*": 19 + 23, "/": 9 + 23}
    assert len(all_problems()) == 184


def test_splits_partition_the_problems():
    ds = Arithmetic(holdout_every=5)
    everything = ds.problems("all")
    train, test = ds.problems("train"), ds.problems("test")
    assert set(train).isdisjoint(test)
    assert set(train) | set(test) == set(everything)
    assert test == everything[4::5]  # every 5th problem of the canonical order
    assert all(op in Counter(p.op for p in test) for op in OPERATIONS)
    none_held = Arithmetic(holdout_every=0)
    assert none_held.problems("train") == everything
    with pytest.raises(ValueError, match="empty"):
        none_held.prompts("test")


# -- tokenization and alignment ---------------------------------------------------------------


def test_prompts_end_at_equals_and_the_answer_is_the_next_token():
    ds = Arithmetic()
    tokens, answers = ds.prompts("all")
    problems = ds.problems("all")
    assert tokens.shape == (184, 5) and tokens.dtype == np.int32
    assert answers.shape == (184,)
    assert (tokens[:, 0] == TOK.bos_id).all()
    assert (tokens[:, -1] == ord("=")).all()
    for row, answer, p in zip(tokens, answers, problems):
        assert TOK.decode(row) == f"{p.a}{p.op}{p.b}="
        assert TOK.decode([answer]) == str(p.answer)


def test_training_sequences_pack_correct_lines_of_the_training_split():
    ds = Arithmetic(n_ctx=40, holdout_every=5)
    tokens = ds.batch(seed=3, step=7, batch_size=6)
    assert tokens.shape == (6, 40) and tokens.dtype == np.int32
    assert (tokens[:, 0] == TOK.bos_id).all()
    train_prompts = {p.prompt for p in ds.problems("train")}
    for row in tokens:
        lines = TOK.decode(row).split("\n")
        complete = lines[:-1]  # the last line may be cut by the context
        assert len(complete) == (40 - 1) // 6
        for line in complete:
            a, op, b, eq, answer = line
            assert eq == "="
            assert _reference(int(a), op, int(b)) == int(answer)
            assert line[:4] in train_prompts  # no held-out problem leaks into training
        # wherever "=" appears with a next token, that token is the right digit
        for i in np.flatnonzero(row[:-1] == ord("=")):
            a, op, b = TOK.decode(row[i - 3 : i])
            assert int(TOK.decode(row[i + 1 : i + 2])) == _reference(int(a), op, int(b))


def test_determinism_and_held_out_evaluation():
    ds = Arithmetic(n_ctx=32)
    np.testing.assert_array_equal(ds.batch(1, 5, 4), Arithmetic(n_ctx=32).batch(1, 5, 4))
    assert not np.array_equal(ds.batch(1, 5, 4), ds.batch(1, 6, 4))
    assert not np.array_equal(ds.batch(1, 5, 4), ds.batch(2, 5, 4))
    evals = ds.eval_batches(2, 3)
    assert evals.shape == (2, 3, 32)
    np.testing.assert_array_equal(evals, ds.eval_batches(2, 3))
    test_prompts = {p.prompt for p in ds.problems("test")}
    for row in evals.reshape(-1, 32):
        for line in TOK.decode(row).split("\n")[:-1]:
            assert line[:4] in test_prompts


def test_registry_and_bad_input():
    ds = make_dataset("arithmetic", n_ctx=48, holdout_every=0)
    assert isinstance(ds, Arithmetic) and ds.n_ctx == 48 and ds.vocab_size == 258
    with pytest.raises(ValueError, match="no option"):
        make_dataset("arithmetic", vocab_size=10)
    with pytest.raises(ValueError, match="n_ctx"):
        Arithmetic(n_ctx=5)
    with pytest.raises(ValueError, match="holdout_every"):
        Arithmetic(holdout_every=1)
    with pytest.raises(ValueError, match="split"):
        ds.problems("validation")


def test_accuracy_by_operation():
    problems = all_problems()
    correct = np.array([p.op == "+" or (p.op == "/" and p.a == 0) for p in problems])
    acc = accuracy_by_operation(correct, problems)
    assert acc == {"+": 1.0, "-": 0.0, "*": 0.0, "/": 9 / 32, "overall": (55 + 9) / 184}
    with pytest.raises(ValueError, match="one entry per problem"):
        accuracy_by_operation(correct[:-1], problems)


# -- block removal ----------------------------------------------------------------------------

GEMMA2 = SMALL_CONFIGS["gemma2_gqa"]  # 3 layers local/global/local, GQA, soft-caps, post-norms


def _without_layer(params, cfg, layer):
    """The source study's method: a backbone assembled from every block but `layer`."""
    blocks = {k: np.delete(np.asarray(v), layer, axis=0) for k, v in params["blocks"].items()}
    types = tuple(t for i, t in enumerate(cfg.resolved_layer_types) if i != layer)
    return {**params, "blocks": blocks}, cfg.replace(n_layers=cfg.n_layers - 1, layer_types=types)


@pytest.mark.parametrize("layer", range(GEMMA2.n_layers))
def test_layer_removal_skips_the_block(layer):
    cfg = GEMMA2
    params = random_model(cfg, seed=1)
    tokens = random_tokens(cfg, batch=3, n_pos=9, seed=2)
    edits = ablation_edits(cfg, "layer", layer, method="zero")
    logits, stream = mj.run_with_stream(
        params, tokens, cfg, capture=["resid_pre", "resid_post"], edits=edits
    )
    pre, post = np.asarray(stream["resid_pre"]), np.asarray(stream["resid_post"])
    np.testing.assert_array_equal(post[layer], pre[layer])  # the block wrote nothing
    for other in range(cfg.n_layers):
        if other != layer:  # every other block still writes
            assert np.abs(post[other] - pre[other]).max() > 1e-2
    # the earlier layers are untouched
    _, clean = mj.run_with_stream(params, tokens, cfg, capture=["resid_pre", "resid_post"])
    np.testing.assert_array_equal(pre[: layer + 1], np.asarray(clean["resid_pre"])[: layer + 1])
    # and the run equals the model with that block taken out of the stack
    short_params, short_cfg = _without_layer(params, cfg, layer)
    reference = mj.forward(short_params, tokens, short_cfg)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_accuracy_on_a_model_matches_its_argmax():
    ds = Arithmetic()
    cfg = GEMMA2.replace(d_vocab=ds.vocab_size)
    params = random_model(cfg, seed=4)
    tokens, answers = ds.prompts("all")
    predicted = np.asarray(mj.forward(params, tokens, cfg))[:, -1].argmax(-1)
    ops = np.array([p.op for p in ds.problems("all")])
    acc = ds.accuracy(greedy_next_tokens(params, tokens, cfg), "all")
    for op in OPERATIONS:
        assert acc[op] == pytest.approx(np.mean(predicted[ops == op] == answers[ops == op]))
    assert acc["overall"] == pytest.approx(np.mean(predicted == answers))
    np.testing.assert_array_equal(
        greedy_next_tokens(params, tokens, cfg, batch_size=100), predicted
    )
    with pytest.raises(ValueError, match="one token per prompt"):
        ds.accuracy(predicted[:-1], "all")
