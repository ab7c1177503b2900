"""The tracking-overhead rows of `train.py`: its workers (`track/on`, `track/off`) and
its table. `train.py` runs them; see its docstring and experiments/benchmarks/README.md.

`track/on` runs `mechjax.train.train` with timing wrappers installed in that worker
only; `track/off` runs the same compiled step over the same batches in a bare loop.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from common import PeakMemory, TimeSpent, fmt_s, init_jax_runtime, markdown_table, toy_config

TRACKING_TARGET = 0.10  # tracking adds <= 10% wall time


def _track_setup(spec: dict):
    from mechjax.data import make_dataset
    from mechjax.train import TrainConfig

    cfg = toy_config(spec["d_model"], spec["n_heads"], spec["n_ctx"], spec["d_vocab"])
    dataset = make_dataset(
        "repeated", n_ctx=spec["n_ctx"], vocab_size=spec["d_vocab"], **spec["dataset"]
    )
    train_cfg = TrainConfig(
        steps=spec["track_steps"], batch_size=spec["batch"], lr=spec["lr"], b2=spec["b2"]
    )
    return cfg, dataset, train_cfg


def _save_params(spec: dict, params) -> None:
    import jax

    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
    np.savez(os.path.join(spec["tmpdir"], f"track_{spec['impl']}.npz"), *leaves)


class _TimedBatches:
    """A dataset whose `batch` is timed; everything else is the wrapped dataset's."""

    def __init__(self, dataset, timed_batch):
        self._dataset, self.batch = dataset, timed_batch

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def track_on(spec: dict) -> dict:
    import jax

    from mechjax.dynamics.tracking import Tracker
    from mechjax.train import checkpointing, loop, train

    init_jax_runtime()
    mem = PeakMemory()
    cfg, dataset, train_cfg = _track_setup(spec)
    timer = TimeSpent("evaluate", "checkpoint", "init", "step", "batch")
    Tracker.evaluate = timer.wrap(Tracker.evaluate, "evaluate")
    checkpointing.save_checkpoint = timer.wrap(checkpointing.save_checkpoint, "checkpoint")
    # what the bare loop also does, timed inside this run: the initial state, the compiled
    # step (waited for) and the batch generation. The rest of the wall time is what
    # tracking adds, measured in one process, free of the host's drift between processes.
    make_step = loop.make_train_step

    def make_timed_step(*args, **kwargs):
        step = make_step(*args, **kwargs)
        return timer.wrap(lambda *batch: jax.block_until_ready(step(*batch)), "step")

    loop.make_train_step = make_timed_step
    loop.init_states = timer.wrap(loop.init_states, "init")
    dataset = _TimedBatches(dataset, timer.wrap(dataset.batch, "batch"))
    with tempfile.TemporaryDirectory(prefix="mechjax-bench-run-") as run_dir:
        start = time.perf_counter()
        result = train(cfg, train_cfg, dataset, run_dir, finalize=False)
        wall = time.perf_counter() - start
        _save_params(spec, result.state.params)
    return {
        "wall_s": wall,
        "steps": train_cfg.steps,
        "evals": timer.spent["evaluate"],
        "checkpoints": timer.spent["checkpoint"],
        "loop_s": timer.seconds("init", "step", "batch"),
        "peak_mib": mem.delta_mib(),
        "train_cfg": train_cfg.to_dict(),
    }


def track_off(spec: dict) -> dict:
    """The loop of `train` without evaluations, checkpoints or the run directory."""
    import jax.numpy as jnp

    from mechjax.train import init_states, make_train_step

    init_jax_runtime()
    mem = PeakMemory()
    cfg, dataset, train_cfg = _track_setup(spec)
    start = time.perf_counter()
    states = init_states(cfg, train_cfg)
    step = make_train_step(cfg, train_cfg)
    seeds = train_cfg.data_seeds()
    for i in range(train_cfg.steps):
        tokens = np.stack([dataset.batch(seed, i, train_cfg.batch_size) for seed in seeds])
        states, losses = step(states, jnp.asarray(tokens))
        if not np.all(np.isfinite(np.asarray(losses))):
            raise RuntimeError(f"loss became {losses} at step {i + 1}")
    wall = time.perf_counter() - start
    _save_params(spec, states.params)
    return {"wall_s": wall, "steps": train_cfg.steps, "peak_mib": mem.delta_mib()}


def track_table(on: dict, off: dict) -> tuple[str, list[str]]:
    overhead = on["wall_s"] / off["wall_s"] - 1
    (n_eval, eval_s), (n_ckpt, ckpt_s) = on["evals"], on["checkpoints"]
    loop_s = on["loop_s"]
    in_process = on["wall_s"] / loop_s - 1
    other = on["wall_s"] - loop_s - eval_s - ckpt_s

    def verdict(x):
        return ("met" if x <= TRACKING_TARGET else "NOT met") + f" (<= {TRACKING_TARGET:.0%})"

    headers = ["run", "steps", "wall s", "evaluations (n, s)", "checkpoints (n, s)", "overhead"]
    rows = [
        ["bare step loop (tracking off)", off["steps"], fmt_s(off["wall_s"]), "—", "—", ""],
        [
            "`mechjax.train.train` (default schedule, finalize=False)",
            on["steps"],
            fmt_s(on["wall_s"]),
            f"{n_eval}, {eval_s:.2f}",
            f"{n_ckpt}, {ckpt_s:.2f}",
            f"{overhead:+.1%} vs the bare loop's process — target {verdict(overhead)}",
        ],
        [
            "the same `train` run: its init, steps and batches alone",
            on["steps"],
            fmt_s(loop_s),
            "",
            "",
            f"{in_process:+.1%} in one process — target {verdict(in_process)}",
        ],
    ]
    notes = [
        "two measures of the overhead: the wall time of `train` over a separate bare-loop "
        "process (exposed to the host's drift between processes), and, inside the `train` "
        "process, its wall time over the time spent in what the bare loop runs: `init_states`, "
        "the compiled steps (each waited for) and the batch generation",
        f"in-process split of the overhead: evaluations {eval_s / loop_s:+.1%}, checkpoints "
        f"{ckpt_s / loop_s:+.1%}, rest (run directory, eval inputs, logging, loss checks) "
        f"{other / loop_s:+.1%} of the step loop's time",
        "train() settings: "
        + ", ".join(f"{k}={v}" for k, v in on["train_cfg"].items() if k != "seeds"),
    ]
    return markdown_table(headers, rows), notes


def params_diff(tmpdir: str) -> float:
    with (
        np.load(os.path.join(tmpdir, "track_on.npz")) as a,
        np.load(os.path.join(tmpdir, "track_off.npz")) as b,
    ):
        return max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
