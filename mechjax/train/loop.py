"""The training loop: a run directory, scheduled evaluations and checkpoints, resume,
Ctrl-C and divergence handling.

A run directory (format in `docs/RUN_FORMAT.md`, file names in `mechjax.io.runs`) holds
`config.json`, `metrics.jsonl`, `per_token_loss.npz`, `checkpoints/`, and when the run
ends `final_model/` and `final_pattern.npz`. With several seeds each model gets its own
run directory `seed_<s>/` and the stacked training state is checkpointed once at the
top. The loop knows nothing of figures or pages: it reports each step to an optional
callback (`on_step`, e.g. `mechjax.views.progress.ProgressBar`) and returns its
results; `mechjax train` then writes the summary and the report (`mechjax.views`).

Nothing a user saved is overwritten: an existing, non-empty directory is resumed (when
asked) or refused.

On a mesh (`train(..., mesh=make_mesh("data=4"))`) the state and each batch are placed
as `mechjax.train.state.train_shardings` says and the step runs sharded; evaluations run
on a gathered copy of the parameters. With several processes (`mechjax.distributed`)
every process runs this loop on the same data (each keeps its devices' share of each
batch), orbax writes the checkpoints from all of them together, and process 0 alone
evaluates and writes the other files. A run saved on one mesh resumes on any other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..distributed import barrier, is_coordinator, make_mesh
from ..dynamics.tracking import EvalInputs, Tracker, log_spaced_steps, make_eval_inputs
from ..io.orbax_io import save_model
from ..io.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FINAL_MODEL_DIR,
    FINAL_PATTERN_FILE,
    METRICS_FILE,
    PER_TOKEN_LOSS_FILE,
)
from ..model import sharding
from ..model.config import ModelConfig
from ..model.transformer import run_with_stream
from ..version import __version__
from . import checkpointing
from .state import (
    TrainConfig,
    TrainState,
    init_states,
    learning_rate_schedule,
    make_train_step,
    train_shardings,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What the loop tells its `on_step` callback after each update.

    step: updates done; start: the step this call began at (> 0 when resumed); total:
    the run's length; losses: `[model]` training losses of this step; record: the latest
    evaluation of model 0 (a `metrics.jsonl` record; empty before the first); evaluated:
    whether `record` was made at this step."""

    step: int
    start: int
    total: int
    losses: np.ndarray
    record: dict
    evaluated: bool


@dataclasses.dataclass
class RunResult:
    run_dirs: list[Path]
    state: TrainState
    final_step: int
    interrupted: bool = False


def schedules(train_cfg: TrainConfig) -> tuple[set[int], set[int]]:
    """(evaluation steps, checkpoint steps). Step s means "after s updates"."""
    evals = {0} | set(log_spaced_steps(train_cfg.steps, train_cfg.n_evals))
    ckpts = set(log_spaced_steps(train_cfg.steps, train_cfg.n_log_checkpoints))
    if train_cfg.checkpoint_every:
        ckpts |= set(
            range(train_cfg.checkpoint_every, train_cfg.steps + 1, train_cfg.checkpoint_every)
        )
    return evals, ckpts | {train_cfg.steps}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _RunLog:
    """metrics.jsonl and per_token_loss.npz of one model's run directory."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.metrics_path = run_dir / METRICS_FILE
        self.pca_path = run_dir / PER_TOKEN_LOSS_FILE
        self.pca_steps: list[int] = []
        self.pca_losses: list[np.ndarray] = []

    def truncate_after(self, step: int) -> None:
        """Drop records written after `step` (a resumed run redoes them)."""
        if self.metrics_path.exists():
            kept = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step
            ]
            _atomic_write(self.metrics_path, "".join(line + "\n" for line in kept))
        if self.pca_path.exists():
            with np.load(self.pca_path) as data:
                keep = data["steps"] <= step
                self.pca_steps = data["steps"][keep].tolist()
                self.pca_losses = list(data["losses"][keep])

    def append(self, record: dict, pca_losses: np.ndarray, inputs: EvalInputs) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.pca_steps.append(record["step"])
        self.pca_losses.append(pca_losses)
        tmp = self.pca_path.with_name("per_token_loss.tmp.npz")
        np.savez(
            tmp,
            steps=np.asarray(self.pca_steps),
            losses=np.stack(self.pca_losses),
            example_index=np.arange(len(inputs.pca_token_index)),
            token_index=inputs.pca_token_index,
        )
        os.replace(tmp, self.pca_path)


def _prepare_run_dir(out_dir: Path, resume: bool) -> bool:
    """Returns True when resuming. Refuses to touch a non-empty directory otherwise."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not resume:
            raise FileExistsError(
                f"run directory {out_dir} already exists and is not empty; pass --resume to "
                "continue that run, or choose a new --out directory"
            )
        if checkpointing.latest_checkpoint(out_dir / CHECKPOINTS_DIR) is None:
            raise FileNotFoundError(
                f"cannot resume {out_dir}: it has no complete checkpoint under checkpoints/; "
                "choose a new --out directory to start afresh"
            )
        return True
    if resume:
        raise FileNotFoundError(
            f"cannot resume {out_dir}: the directory does not exist or is empty"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return False


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset,
    out_dir,
    *,
    resume: bool = False,
    on_step=None,
    stop_after: int | None = None,
    finalize: bool = True,
    mesh=None,
    fsdp: bool = False,
    data_spec: dict | None = None,
) -> RunResult:
    """Train `len(train_cfg.seeds)` models together, tracking and checkpointing.

    `on_step(StepReport)` is called after every update (progress display). `stop_after`
    ends the loop early at that step with a checkpoint (as an interruption would), which
    tests use to check that resuming is bit-identical. `finalize` exports each finished
    model (`final_model/`) and its best induction head's pattern.

    mesh: a `jax.sharding.Mesh` from `mechjax.distributed.make_mesh` to train on
    several devices (several processes: required, default every device on `data`);
    `fsdp` splits parameters and optimiser state over its `data` axis too.
    data_spec: how the dataset was made, `{"name": registry name, **options}`
    (`make_dataset(name, **options)`), recorded in `config.json` so later analyses
    (`mechjax llc`) can rebuild it.
    """
    out_dir = Path(out_dir)
    _check_dataset(model_cfg, dataset)
    if mesh is None and jax.process_count() > 1:
        mesh = make_mesh("data=-1")
    if mesh is not None:
        _check_mesh(mesh, train_cfg)
    ckpt_root = out_dir / CHECKPOINTS_DIR
    state, start, run_dirs, logs = _open_run(
        out_dir, model_cfg, train_cfg, dataset, resume, mesh, fsdp, data_spec
    )

    inputs = make_eval_inputs(dataset, model_cfg, n_eval=train_cfg.eval_batch_size)
    tracker = Tracker(model_cfg, inputs)
    eval_steps, ckpt_steps = schedules(train_cfg)
    shardings = None if mesh is None else train_shardings(state, mesh, fsdp=fsdp)
    step_fn = make_train_step(model_cfg, train_cfg, shardings)
    data_seeds = train_cfg.data_seeds()
    end = min(train_cfg.steps, stop_after) if stop_after is not None else train_cfg.steps

    interrupted = False
    stop_requested = []
    previous_handler = _install_sigint(stop_requested)
    t0 = time.time()
    last = {}
    done = start
    try:
        if start == 0 and 0 in eval_steps:
            last = _evaluate(tracker, state, logs, inputs, mesh, step=0, tokens_seen=0,
                             wall=0.0, loss=None, lr=0.0)  # fmt: skip
        for step in range(start, end):
            tokens = np.stack(
                [dataset.batch(seed, step, train_cfg.batch_size) for seed in data_seeds]
            )
            batch = (
                jnp.asarray(tokens) if mesh is None else sharding.place(tokens, shardings.tokens)
            )
            state, losses = step_fn(state, batch)
            losses = np.asarray(losses)
            done = step + 1
            if not np.all(np.isfinite(losses)):
                _diverged(f"the loss became {losses.tolist()} at step {done}", ckpt_root)
            if done in eval_steps:
                seen = done * train_cfg.batch_size * tokens.shape[-1]
                last = _evaluate(tracker, state, logs, inputs, mesh, step=done, tokens_seen=seen,
                                 wall=time.time() - t0, loss=losses, lr=_lr(train_cfg, done))  # fmt: skip
            if done in ckpt_steps or done == end:
                # a step's loss is that of the parameters before its update: check the
                # updated parameters themselves before they become a "good" checkpoint
                if not _all_finite(state.params):
                    _diverged(f"the parameters became NaN/inf at step {done}", ckpt_root)
                checkpointing.save_checkpoint(ckpt_root, state, model_cfg, train_cfg, done)
            if on_step is not None and is_coordinator():
                evaluated = done in eval_steps
                on_step(StepReport(done, start, train_cfg.steps, losses, last, evaluated))
            if stop_requested:
                if _all_finite(state.params):
                    checkpointing.save_checkpoint(ckpt_root, state, model_cfg, train_cfg, done)
                interrupted = True
                break
    finally:
        signal.signal(signal.SIGINT, previous_handler) if previous_handler is not None else None

    final_step = done
    if not interrupted and finalize and final_step == train_cfg.steps:
        _finalize(_host_params(state, mesh), model_cfg, run_dirs, inputs)
    return RunResult(run_dirs, state, final_step, interrupted)


def _check_mesh(mesh, train_cfg: TrainConfig) -> None:
    """Refuse, before anything is written or compiled, a batch the mesh's `data` axis
    or a number of seeds its `seed` axis does not divide."""
    if train_cfg.batch_size % mesh.shape["data"]:
        raise ValueError(
            f"batch_size {train_cfg.batch_size} is not divisible by the mesh's data axis "
            f"({mesh.shape['data']}); choose a batch size that is a multiple of it"
        )
    if len(train_cfg.seeds) % mesh.shape["seed"]:
        raise ValueError(
            f"the mesh's seed axis ({mesh.shape['seed']}) must divide the number of models "
            f"trained together ({len(train_cfg.seeds)}); choose another mesh or number of seeds"
        )


def _host_params(state: TrainState, mesh):
    """The parameters of every model as host numpy arrays (gathered from the mesh's
    devices first: a collective every process joins)."""
    params = state.params if mesh is None else sharding.gather(state.params, mesh)
    return jax.tree_util.tree_map(np.asarray, params)


def _check_dataset(model_cfg: ModelConfig, dataset) -> None:
    if dataset.vocab_size != model_cfg.d_vocab:
        raise ValueError(
            f"the dataset has {dataset.vocab_size} token ids but the model's d_vocab is "
            f"{model_cfg.d_vocab}; set d_vocab={dataset.vocab_size}"
        )
    if model_cfg.positional == "learned" and dataset.n_ctx > model_cfg.n_ctx:
        raise ValueError(
            f"the dataset's context ({dataset.n_ctx}) exceeds the model's n_ctx ({model_cfg.n_ctx})"
        )


def _open_run(
    out_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset,
    resume,
    mesh,
    fsdp,
    data_spec=None,
):
    """The run directory made or resumed: `(state, start step, run_dirs, logs)`, each
    model's `config.json` written and, when resuming, its records after `start` dropped.
    The state lies on `mesh` when one is given."""
    resuming = _prepare_run_dir(out_dir, resume)
    barrier("mechjax-run-dir-checked")  # every process has looked before any writes
    multi = len(train_cfg.seeds) > 1
    run_dirs = [out_dir / f"seed_{s}" for s in train_cfg.seeds] if multi else [out_dir]
    run_config = {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": {
            "name": getattr(dataset, "name", type(dataset).__name__),
            "description": dataset.describe(),
            **({} if data_spec is None else {"spec": data_spec}),
        },
        "mechjax_version": __version__,
    }
    if resuming:
        state, saved_model, saved_train, start = _restore_newest_good(
            out_dir / CHECKPOINTS_DIR, mesh, fsdp
        )
        if saved_model != model_cfg or saved_train != train_cfg:
            raise ValueError(
                f"cannot resume {out_dir}: its checkpoints were made with other options. "
                "Resume with the same options, or start a new --out directory."
            )
    else:
        state, start = init_states(model_cfg, train_cfg), 0
        if mesh is not None:
            state = sharding.place(state, train_shardings(state, mesh, fsdp=fsdp).state)
    logs = []
    for run_dir in run_dirs:
        log = _RunLog(run_dir)
        if is_coordinator():
            run_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(run_dir / CONFIG_FILE, json.dumps(run_config, indent=2))
            if resuming:
                log.truncate_after(start)
        logs.append(log)
    return state, start, run_dirs, logs


def _diverged(what: str, ckpt_root: Path):
    good = checkpointing.latest_checkpoint(ckpt_root)
    raise TrainingDiverged(
        f"{what}; training stopped. The last good checkpoint is "
        f"{good or 'none (no checkpoint was written yet)'}. Lower --lr, raise "
        "--warmup-steps or set --grad-clip, and start a new run."
    )


def _restore_newest_good(ckpt_root: Path, mesh, fsdp: bool):
    """`(state, model config, train config, step)` of the newest checkpoint that
    restores, placed on `mesh` when given. A damaged one (an interrupted write the
    rename did not protect, a disk error) is renamed `step_XXXXXXXX.damaged` — kept, not
    deleted — with a warning, and the one before it is tried."""
    for step in reversed(checkpointing.list_checkpoints(ckpt_root)):
        path = checkpointing.checkpoint_dir(ckpt_root, step)
        try:
            state, model_cfg, train_cfg = checkpointing.load_checkpoint(path, mesh, fsdp=fsdp)
            return state, model_cfg, train_cfg, step
        except ValueError as err:
            aside = path.with_name(path.name + ".damaged")
            n = 1
            while aside.exists():
                aside, n = path.with_name(f"{path.name}.damaged{n}"), n + 1
            os.replace(path, aside)
            warnings.warn(
                f"checkpoint {path.name} could not be restored ({err}); moved to "
                f"{aside.name}, resuming from the checkpoint before it",
                stacklevel=3,
            )
    raise FileNotFoundError(
        f"cannot resume: no checkpoint under {ckpt_root} restores; start a new --out directory"
    )


@jax.jit
def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)]))


def _all_finite(tree) -> bool:
    """Whether every entry of `tree` is finite (one scalar leaves the devices)."""
    return bool(_finite(tree))


def _lr(train_cfg: TrainConfig, step: int) -> float:
    return float(learning_rate_schedule(train_cfg)(step))


def _model(params, i: int):
    return jax.tree_util.tree_map(lambda x: x[i], params)


def _evaluate(tracker, state, logs, inputs, mesh, *, step, tokens_seen, wall, loss, lr) -> dict:
    """Evaluate every model and append the records (process 0 only: the others gather
    the parameters with it and go on)."""
    params = state.params if mesh is None else _host_params(state, mesh)
    if not is_coordinator():
        return {}
    last = {}
    for i, log in enumerate(logs):
        record, pca = tracker.evaluate(_model(params, i))
        record = {
            "step": step,
            "tokens_seen": int(tokens_seen),
            "wall_time": round(wall, 3),
            "lr": lr,
            "train_loss": None if loss is None else float(loss[i]),
            **record,
        }
        log.append(record, pca, inputs)
        if i == 0:
            last = record
    return last


def _install_sigint(flag: list):
    """Ctrl-C sets a flag the loop checks between steps (never mid-update, where the
    donated state buffers would be lost). A second Ctrl-C interrupts at once."""
    try:
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if flag:
                raise KeyboardInterrupt
            flag.append(True)
            print("\nCtrl-C: saving a checkpoint after this step (press again to abort at once)")

        signal.signal(signal.SIGINT, handler)
        return previous
    except ValueError:  # not in the main thread: leave signals alone
        return None


def _finalize(params, model_cfg: ModelConfig, run_dirs: list[Path], inputs: EvalInputs) -> None:
    """Export each model and its best induction head's pattern (process 0 writes)."""
    if not is_coordinator():
        return
    for i, run_dir in enumerate(run_dirs):
        params_i = _model(params, i)
        save_model(run_dir / FINAL_MODEL_DIR, params_i, model_cfg)
        if model_cfg.n_layers:
            _save_best_pattern(params_i, model_cfg, run_dir, inputs)


def _save_best_pattern(params, model_cfg, run_dir: Path, inputs: EvalInputs) -> None:
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    best = json.loads(lines[-1])["best_induction"]
    repeated = inputs.induction_input
    tokens = repeated.tokens[:1]
    _, stream = run_with_stream(params, tokens, model_cfg, capture=["pattern"])
    pattern = np.asarray(stream["pattern"][best["layer"], 0, best["head"]])
    np.savez(
        run_dir / FINAL_PATTERN_FILE,
        pattern=pattern,
        tokens=tokens[0],
        layer=best["layer"],
        head=best["head"],
        seg_len=repeated.seg_len,
    )
