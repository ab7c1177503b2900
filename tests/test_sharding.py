"""More than one device: sharded training (replicated, FSDP, seeds over devices, two
processes) equals one-device training; sharded forward, capture and sweeps equal
unsharded ones; checkpoints saved on one device count resume on another; the mesh and
sharding rules refuse bad input.

Runs with several devices happen in subprocesses (tests/sharded_run.py): JAX fixes the
host device count and the process group when it starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from sharded_run import dataset, flat, toy, train_config

from mechjax.distributed import initialize, parse_mesh
from mechjax.model.sharding import param_spec, stacked_shardings
from mechjax.train import TrainConfig, train
from mechjax.train.state import init_states, training_loss

WORKER = Path(__file__).with_name("sharded_run.py")
ROOT = Path(__file__).resolve().parents[1]
# float32 sums split over devices round differently; 10 Adam steps stay within this
ATOL = 2e-5


def _env(n_devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHJAX_COORDINATOR")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def _worker(args, n_devices: int, timeout: int = 600) -> None:
    done = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        env=_env(n_devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _one_device_run(out: Path, seeds) -> dict:
    result = train(toy(), train_config(seeds), dataset(), out)
    return flat(result.state.params)


def _assert_params_equal(reference: dict, npz_path: Path) -> np.ndarray:
    with np.load(npz_path) as saved:
        for name, value in reference.items():
            np.testing.assert_allclose(saved[name], value, atol=ATOL, rtol=0, err_msg=name)
        return saved["specs"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final parameters of two seeds trained on one device (this process)."""
    return _one_device_run(tmp_path_factory.mktemp("one_device") / "run", (0, 1))


@pytest.mark.parametrize(
    "mesh, fsdp, expected_w_q",
    [
        ("data=4", False, "P('seed', None, None, None, None)"),
        ("seed=2,data=2", True, "P('seed', None, None, 'data', None)"),
        ("data=2,model=2", True, "P('seed', None, 'model', 'data', None)"),
    ],
)
def test_training_on_four_devices_equals_one_device(tmp_path, reference, mesh, fsdp, expected_w_q):
    _worker(["train", tmp_path / "run", mesh, int(fsdp), "0,1"], n_devices=4)
    specs = _assert_params_equal(reference, tmp_path / "run" / "params.npz")
    leaves = list(reference)  # the pytree's leaf order, as the worker's specs
    assert str(specs[leaves.index("blocks/W_Q")]) == expected_w_q
    # every model's run directory is whole: metrics, final model, pattern
    for seed in (0, 1):
        run = tmp_path / "run" / f"seed_{seed}"
        assert (run / "final_model" / "config.json").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) >= 2


def test_a_run_saved_on_four_devices_resumes_on_one_and_the_reverse(tmp_path, reference):
    # saved sharded (FSDP, model axis) at step 5, resumed here on one device
    _worker(["train", tmp_path / "a", "data=2,model=2", 1, "0,1", 7], n_devices=4)
    resumed = train(toy(), train_config((0, 1)), dataset(), tmp_path / "a", resume=True)
    for name, value in reference.items():
        np.testing.assert_allclose(flat(resumed.state.params)[name], value, atol=ATOL, rtol=0)
    # saved on one device at step 5 (stopped at 7), resumed on four with the seeds split
    train(toy(), train_config((0, 1)), dataset(), tmp_path / "b", stop_after=7, finalize=False)
    _worker(["train", tmp_path / "b", "seed=2,data=2", 1, "0,1", "resume"], n_devices=4)
    _assert_params_equal(reference, tmp_path / "b" / "params.npz")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_device(tmp_path, reference):
    """Two processes on localhost (gloo collectives), two devices each: the seeds split
    over processes and the batch over each process's devices, FSDP."""
    port = _free_port()
    args = [str(WORKER), "train", str(tmp_path / "run"), "seed=2,data=2", "1", "0,1"]
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=_env(
                2,
                MECHJAX_COORDINATOR=f"localhost:{port}",
                MECHJAX_NUM_PROCESSES="2",
                MECHJAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    _assert_params_equal(reference, tmp_path / "run" / "params.npz")
    # process 0 alone wrote the files, once
    records = (tmp_path / "run" / "seed_1" / "metrics.jsonl").read_text().splitlines()
    assert [r.split(",")[0] for r in records] == ['{"step": 0', '{"step": 1', '{"step": 10']
    assert (tmp_path / "run" / "checkpoints" / "step_00000010").is_dir()


def test_sharded_forward_capture_and_sweeps_equal_unsharded(tmp_path):
    _worker(["analyses", tmp_path, "data=2,model=2"], n_devices=4)
    with np.load(tmp_path / "analyses.npz") as out:
        assert int(out["n_devices"]) == 4
        assert str(out["W_Q_spec"]) == "P(None, 'model', 'data', None)"
        assert str(out["cells_spec"]) == "P('data',)"
        assert str(out["W_E_spec"]) == "P('model', None)"
        for name in (
            "logits",
            "resid_post",
            "pattern",
            "sweep_resid",
            "sweep_heads",
            "bf16_logits",
        ):
            plain, sharded = out[f"plain/{name}"], out[f"sharded/{name}"]
            assert np.abs(plain).max() > 0.1, name  # something to compare
            np.testing.assert_allclose(sharded, plain, atol=1e-5, rtol=1e-5, err_msg=name)


# -- in this process: rules and refusals ----------------------------------------------------------


def _mesh_shape(**sizes):
    return SimpleNamespace(shape={"seed": 1, "data": 1, "model": 1, **sizes})


def test_parse_mesh_sizes_and_refusals():
    assert parse_mesh("data=4", 4) == {"seed": 1, "data": 4, "model": 1}
    assert parse_mesh("model=2,data=-1", 8) == {"seed": 1, "data": 4, "model": 2}
    assert parse_mesh({"seed": 2, "data": 2}, 4) == {"seed": 2, "data": 2, "model": 1}
    assert parse_mesh(None, 3) == {"seed": 1, "data": 3, "model": 1}
    for bad, match in [
        ("data=3", "has 3 devices but 4 are present"),
        ("batch=4", "unknown axes"),
        ("data", "is not AXIS=SIZE"),
        ("data=-1,model=-1", "at most one axis -1"),
        ("model=3,data=-1", "do not divide"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_mesh(bad, 4)


def test_parameter_rules_split_heads_neurons_and_vocabulary():
    mesh = _mesh_shape(data=2, model=4)
    assert param_spec(("blocks", "W_Q"), (2, 8, 64, 16), mesh, False) == P(
        None, "model", None, None
    )
    assert param_spec(("blocks", "W_O"), (2, 8, 16, 64), mesh, True) == P(
        None, "model", None, "data"
    )
    assert param_spec(("blocks", "W_in"), (2, 64, 256), mesh, False) == P(None, None, "model")
    assert param_spec(("W_E",), (1000, 64), mesh, False) == P("model", None)
    assert param_spec(("W_U",), (64, 1000), mesh, False) == P(None, "model")
    # 2 key/value heads on 4 model devices: kept whole (FSDP still splits d_model)
    assert param_spec(("blocks", "W_K"), (2, 2, 64, 16), mesh, True) == P(None, None, "data", None)
    # norms are replicated unless FSDP, which takes the largest divisible axis
    assert param_spec(("blocks", "ln1_w"), (2, 64), mesh, False) == P(None, None)
    assert param_spec(("blocks", "ln1_w"), (3, 64), mesh, True) == P(None, "data")
    assert param_spec(("blocks", "ln1_w"), (3, 5), mesh, True) == P(None, None)


def test_training_state_rules_cover_adam_moments():
    cfg, train_cfg = toy(), train_config((0, 1))
    abstract = jax.eval_shape(lambda: init_states(cfg, train_cfg))
    mesh = AbstractMesh((2, 2, 2), ("seed", "data", "model"))
    shardings = stacked_shardings(abstract, abstract.params, mesh, fsdp=True)
    specs = {
        "/".join(
            str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path
        ): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
    }
    w_q = P("seed", None, "model", "data", None)  # [seed, layer, head, d_model, d_head]
    assert specs["params/blocks/W_Q"] == w_q
    moments = [name for name in specs if name.endswith("/blocks/W_Q") and "opt_state" in name]
    assert len(moments) == 2 and all(specs[name] == w_q for name in moments)  # Adam's mu, nu
    assert specs["step"] == P("seed") and specs["rng"] == P("seed")
    assert all(spec[0] == "seed" for spec in specs.values())


def test_refusals_before_compiling(tmp_path):
    mesh = jax.make_mesh((1, 1, 1), ("seed", "data", "model"))
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by the mesh's data axis"):
        train(toy(), train_config((0,)), dataset(), tmp_path / "a", mesh=_FakeMesh(mesh, data=3))
    with pytest.raises(ValueError, match="must divide the number of models"):
        train(toy(), train_config((0,)), dataset(), tmp_path / "b", mesh=_FakeMesh(mesh, seed=2))
    with pytest.raises(ValueError, match="needs all of MECHJAX_COORDINATOR"):
        initialize(coordinator="localhost:1234")


class _FakeMesh:
    """A one-device mesh that reports other axis sizes: the checks read only `.shape`."""

    def __init__(self, mesh, **sizes):
        self.mesh, self.shape = mesh, {**dict(mesh.shape), **sizes}

    def __getattr__(self, name):
        return getattr(self.mesh, name)


# -- mixed precision ------------------------------------------------------------------------------


def test_bfloat16_training_keeps_float32_master_weights_and_tracks_float32(tmp_path):
    seeds = (0,)
    base = train_config(seeds)
    f32 = train(toy(), base, dataset(), tmp_path / "f32", finalize=False)
    mixed_cfg = TrainConfig(**{**base.to_dict(), "seeds": seeds, "precision": "bfloat16"})
    mixed = train(toy(), mixed_cfg, dataset(), tmp_path / "bf16", finalize=False)
    for leaf in jax.tree_util.tree_leaves(mixed.state.params):
        assert leaf.dtype == np.float32
    # the bfloat16 forward's loss is the float32 loss to bfloat16 precision (~3 digits)
    params = jax.tree_util.tree_map(lambda x: x[0], f32.state.params)
    tokens = np.asarray(dataset().batch(0, 0, 8))
    exact = training_loss(toy(), base)(params, tokens)
    half = training_loss(toy(), mixed_cfg)(params, tokens)
    assert abs(float(half) - float(exact)) < 2e-2 * float(exact)
    assert float(half) != float(exact)  # it did run in bfloat16
    # and ten mixed-precision steps land near the float32 weights
    diffs = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(f32.state.params),
            jax.tree_util.tree_leaves(mixed.state.params),
        )
    ]
    assert max(diffs) < 0.05
    with pytest.raises(ValueError, match="precision 'float16' is unknown"):
        TrainConfig(precision="float16")


# -- the command line -----------------------------------------------------------------------------


def _cli(args, n_devices: int):
    return subprocess.run(
        [sys.executable, "-m", "mechjax", "--no-compilation-cache", *map(str, args)],
        env=_env(n_devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_command_line_trains_and_analyses_on_a_mesh(tmp_path):
    run = tmp_path / "run"
    common = ["--preset", "attn2-synthetic", "--steps", "6", "--n-evals", "2", "--no-progress"]
    options = ["--set", "train.eval_batch_size=8", "--set", "train.checkpoint_every=0"]
    done = _cli(["train", *common, *options, "--mesh", "data=2", "--fsdp", "--out", run], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mesh: data=2 (fsdp)" in done.stdout
    assert (run / "report.html").is_file() and (run / "final_model" / "config.json").is_file()
    done = _cli(["analyze", run, "--mesh", "model=2", "--batch", "2"], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "analysis" / "analysis.json").is_file()
    # bad meshes end in one line, before anything runs
    for mesh, message in [("data=3", "has 3 devices but 2 are present"), ("gpu=2", "unknown axes")]:
        done = _cli(["train", *common, "--mesh", mesh, "--out", tmp_path / "bad"], 2)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
