"""Training: induction forms and is detected, resume is bit-identical, seeds vmap, and
failures (bad options, NaN, Ctrl-C, corrupted checkpoints, existing directories) are
handled without losing anything."""

from __future__ import annotations

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

import mechjax as mj
from mechjax.cli import main as cli_main
from mechjax.data import make_dataset
from mechjax.io.run_checkpoints import latest_checkpoint, load_checkpoint_params
from mechjax.train import TrainConfig, TrainingDiverged, list_checkpoints, load_checkpoint, train
from mechjax.views.run_report import build_report, write_summary

# short segments: many repeats per context, so induction pays off early (phase change
# around step 600-800 with this recipe)
SYNTH = dict(vocab_size=64, n_ctx=64, min_len=4, max_len=16)


def _toy(n_layers: int) -> mj.ModelConfig:
    return mj.presets.attn_only(n_layers, d_model=64, n_heads=8, d_vocab=64, n_ctx=64)


def _quick(**overrides) -> TrainConfig:
    options = dict(
        steps=24,
        batch_size=8,
        n_evals=6,
        eval_batch_size=16,
        n_log_checkpoints=4,
        checkpoint_every=10,
    )
    options.update(overrides)
    return TrainConfig(**options)


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in lines]


@pytest.fixture(scope="module")
def synthetic():
    return make_dataset("repeated", **SYNTH)


def test_two_layer_run_forms_an_induction_head_and_the_phase_change_is_detected(
    tmp_path, synthetic
):
    cfg = TrainConfig(
        steps=1200,
        schedule="constant",
        batch_size=16,
        n_evals=30,
        eval_batch_size=64,
        n_log_checkpoints=3,
        checkpoint_every=0,
    )
    result = train(_toy(2), cfg, synthetic, tmp_path / "run")
    assert not (tmp_path / "run" / "report.html").exists()  # training writes no pages
    write_summary(tmp_path / "run")
    build_report(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = summary["best_induction_head"]
    assert best["score"] > 0.4, summary
    phase = summary["phase_change"]
    assert phase is not None, summary.get("phase_change_note")
    assert 50 < phase["start"] <= phase["steepest"] <= phase["end"] <= 1200
    # the induction head sits in layer 1, fed by a layer-0 previous-token head
    assert best["layer"] == 1
    last = _records(tmp_path / "run")[-1]
    assert max(last["previous_token"][0]) > 0.3
    assert last["icl_score"] < -0.5  # the second copy of each segment is predicted
    assert (tmp_path / "run" / "report.html").exists()
    assert result.final_step == 1200


def test_one_layer_run_finds_no_phase_change(tmp_path, synthetic):
    cfg = TrainConfig(
        steps=700,
        batch_size=16,
        n_evals=20,
        eval_batch_size=64,
        n_log_checkpoints=2,
        checkpoint_every=0,
    )
    train(_toy(1), cfg, synthetic, tmp_path / "run")
    summary = write_summary(tmp_path / "run")
    assert summary["phase_change"] is None
    assert summary["best_induction_head"]["score"] < 0.3


def test_resume_after_interruption_is_bit_identical(tmp_path, synthetic):
    model_cfg, cfg = _toy(2), _quick()
    full = train(model_cfg, cfg, synthetic, tmp_path / "full", finalize=False)
    part = train(model_cfg, cfg, synthetic, tmp_path / "resumed", stop_after=13)
    assert part.final_step == 13 and 13 in list_checkpoints(tmp_path / "resumed" / "checkpoints")
    resumed = train(model_cfg, cfg, synthetic, tmp_path / "resumed", resume=True, finalize=False)
    for a, b in zip(
        jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(resumed.state)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _records(tmp_path / "full") == _records(tmp_path / "resumed")
    with (
        np.load(tmp_path / "full" / "per_token_loss.npz") as x,
        np.load(tmp_path / "resumed" / "per_token_loss.npz") as y,
    ):
        np.testing.assert_array_equal(x["losses"], y["losses"])
        np.testing.assert_array_equal(x["steps"], y["steps"])


def test_seeds_trained_together_equal_seeds_trained_one_by_one(tmp_path, synthetic):
    model_cfg = _toy(2)
    together = train(
        model_cfg,
        _quick(seeds=(3, 7)),
        synthetic,
        tmp_path / "both",
        finalize=False,
    )
    for i, seed in enumerate((3, 7)):
        alone = train(
            model_cfg,
            _quick(seeds=(seed,)),
            synthetic,
            tmp_path / f"s{seed}",
            finalize=False,
        )
        for a, b in zip(
            jax.tree_util.tree_leaves(together.state.params),
            jax.tree_util.tree_leaves(alone.state.params),
        ):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], rtol=2e-5, atol=2e-6)
        alone_records = _records(tmp_path / f"s{seed}")
        joint_records = _records(tmp_path / "both" / f"seed_{seed}")
        np.testing.assert_allclose(
            [r["eval_loss"] for r in joint_records],
            [r["eval_loss"] for r in alone_records],
            rtol=1e-5,
        )
    # different seeds really are different models
    w = np.asarray(together.state.params["W_E"])
    assert not np.allclose(w[0], w[1])
    # the run format alone reads one model's parameters back, without the training code
    latest = latest_checkpoint(tmp_path / "both" / "checkpoints")
    for i in range(2):
        params, cfg, step = load_checkpoint_params(latest, model=i)
        assert cfg == model_cfg and step == 24
        for name, leaf in jax.tree_util.tree_leaves_with_path(together.state.params):
            got = jax.tree_util.tree_leaves_with_path(params)
            got = dict((jax.tree_util.keystr(k), v) for k, v in got)[jax.tree_util.keystr(name)]
            np.testing.assert_array_equal(got, np.asarray(leaf)[i])
    with pytest.raises(ValueError, match="model index 2 out of range"):
        load_checkpoint_params(latest, model=2)


def test_the_loop_reports_each_step_to_its_callback(tmp_path, synthetic):
    reports = []
    result = train(_toy(1), _quick(steps=12), synthetic, tmp_path / "run", on_step=reports.append)
    assert [r.step for r in reports] == list(range(1, 13)) and result.final_step == 12
    assert all(r.total == 12 and r.start == 0 and r.losses.shape == (1,) for r in reports)
    evaluated = [r.step for r in reports if r.evaluated]
    records = _records(tmp_path / "run")
    assert evaluated == [r["step"] for r in records if r["step"] > 0]
    assert {k: v for k, v in reports[-1].record.items() if k != "wall_time"} == records[-1]
    # run data only: the summary and the pages are the caller's (the CLI's) to write
    assert (tmp_path / "run" / "final_model").is_dir()
    assert not list((tmp_path / "run").glob("*.html")) and not list(
        (tmp_path / "run").glob("*.png")
    )


def test_existing_run_directory_is_never_overwritten(tmp_path, synthetic):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_toy(1), _quick(), synthetic, run)
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(_toy(1), _quick(), synthetic, run, resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(_toy(1), _quick(), synthetic, tmp_path / "absent", resume=True)


def test_resume_with_other_options_is_refused(tmp_path, synthetic):
    train(_toy(1), _quick(), synthetic, tmp_path / "run", stop_after=5)
    with pytest.raises(ValueError, match="other options"):
        train(_toy(1), _quick(lr=1e-4), synthetic, tmp_path / "run", resume=True)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, synthetic):
    # a huge constant step: finite after one update (1e30), then q.k overflows to inf -> NaN
    cfg = _quick(
        steps=60,
        lr=1e30,
        warmup_steps=0,
        grad_clip=None,
        schedule="constant",
        checkpoint_every=1,
        n_log_checkpoints=1,
    )
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as err:
        train(_toy(1), cfg, synthetic, tmp_path / "run")
    steps = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert steps, "a checkpoint from before the divergence must remain"
    assert f"step_{steps[-1]:08d}" in str(err.value)
    state, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{steps[-1]:08d}")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.params))


class _InterruptingDataset:
    """The synthetic task, sending SIGINT to this process when `step` is requested."""

    def __init__(self, base, step):
        self.base, self.step = base, step
        self.vocab_size, self.bos_id, self.n_ctx = base.vocab_size, base.bos_id, base.n_ctx

    def batch(self, seed, step, batch_size):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
        return self.base.batch(seed, step, batch_size)

    def eval_batches(self, n, batch_size):
        return self.base.eval_batches(n, batch_size)

    def describe(self):
        return self.base.describe()


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, synthetic):
    data = _InterruptingDataset(synthetic, step=7)
    result = train(_toy(1), _quick(), data, tmp_path / "run")
    assert result.interrupted and result.final_step == 8  # the step in flight completes
    assert 8 in list_checkpoints(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed = train(_toy(1), _quick(), synthetic, tmp_path / "run", resume=True)
    assert resumed.final_step == 24 and not resumed.interrupted


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path, synthetic):
    train(_toy(1), _quick(), synthetic, tmp_path / "run", stop_after=4)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(ckpt)
    shutil.rmtree(ckpt / "state")
    (ckpt / "state").mkdir()
    (ckpt / "config.json").write_text(
        json.dumps({"step": 4, "model": _toy(1).to_dict(), "train": _quick().to_dict()})
    )
    with pytest.raises(ValueError, match="damaged or incomplete"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lr=-1.0), "lr must be positive"),
        (dict(schedule="exp"), "schedule 'exp' is unknown"),
        (dict(seeds=(1, 1)), "distinct"),
        (dict(steps=0), "steps must be >= 1"),
    ],
)
def test_bad_training_options(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_model_and_data_must_agree(tmp_path, synthetic):
    with pytest.raises(ValueError, match="d_vocab"):
        train(_toy(1).replace(d_vocab=100), _quick(), synthetic, tmp_path / "run")


def test_command_line_train_writes_a_full_run_directory(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(
        [
            "train",
            "--preset",
            "attn2-synthetic",
            "--steps",
            "20",
            "--n-evals",
            "5",
            "--no-progress",
            "--set",
            "train.eval_batch_size=16",
            "--set",
            "train.checkpoint_every=0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in (
        "config.json",
        "metrics.jsonl",
        "per_token_loss.npz",
        "summary.json",
        "report.html",
        "final_pattern.npz",
    ):
        assert (out / name).exists(), name
    params, cfg = mj.checkpoints.load_model(out / "final_model")
    assert cfg.n_layers == 2 and cfg.d_vocab == 64
    assert "phase change" in capsys.readouterr().out
    # a second run into the same directory is refused, with the fix named
    code = cli_main(
        ["train", "--preset", "attn2-synthetic", "--steps", "5", "--no-progress", "--out", str(out)]
    )
    assert code == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--set", "model.wings=2", "--steps", "1"], "unknown model fields"),
        (["train", "--set", "lr=2"], "SECTION.FIELD=VALUE"),
        (["train", "--seeds", "a,b"], "comma-separated integers"),
        (["train", "--data", "nonsense"], "unknown dataset"),
    ],
)
def test_command_line_errors_name_the_problem(argv, message, capsys, tmp_path):
    assert cli_main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_weight_decay_applies_to_weight_matrices_only():
    from mechjax.train import make_optimizer

    cfg = mj.ModelConfig(
        d_vocab=11,
        d_model=8,
        n_layers=2,
        n_heads=2,
        d_head=4,
        n_ctx=8,
        d_mlp=16,
        use_attn_bias=True,
        use_mlp_bias=True,
    )
    params = mj.init_params(jax.random.key(0), cfg)
    zero_grads = jax.tree_util.tree_map(np.zeros_like, params)
    optimizer = make_optimizer(
        TrainConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    )
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    # with zero gradients only decoupled weight decay moves a parameter
    moved = {k: bool(np.any(np.asarray(v) != 0)) for k, v in updates["blocks"].items()}
    assert moved["W_Q"] and moved["W_O"] and moved["W_in"] and moved["W_out"]
    assert not any(moved[k] for k in ("ln1_w", "ln1_b", "ln2_w", "b_Q", "b_O", "b_in", "b_out"))
    assert np.any(np.asarray(updates["W_E"]) != 0) and not np.any(
        np.asarray(updates["ln_final_w"]) != 0
    )
