"""The multi-device side of tests/test_sharding.py, run in its own processes: the device
count (`--xla_force_host_platform_device_count`) and `jax.distributed` must be set
before JAX starts, so they never leak into the rest of the suite.

    python tests/sharded_run.py train OUT MESH FSDP SEEDS [STOP_AFTER | resume]
    python tests/sharded_run.py analyses OUT MESH

`train` trains the toy below on MESH ("none": one device) and writes the final
parameters of every model to OUT/params.npz; `analyses` runs forward, capture and
sweeps on parameters sharded over MESH and unsharded, and writes both to
OUT/analyses.npz. With MECHJAX_COORDINATOR etc. set, each process joins a
multi-process run first (`mechjax.distributed.initialize`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def toy():
    import mechjax as mj

    return mj.presets.attn_only(2, d_model=32, n_heads=4, d_vocab=64, n_ctx=32)


def dataset():
    from mechjax.data import make_dataset

    return make_dataset("repeated", vocab_size=64, n_ctx=32, min_len=4, max_len=8)


def train_config(seeds):
    from mechjax.train import TrainConfig

    return TrainConfig(
        steps=10,
        batch_size=8,
        n_evals=2,
        eval_batch_size=8,
        n_log_checkpoints=1,
        checkpoint_every=5,
        seeds=tuple(seeds),
    )


def flat(tree) -> dict[str, np.ndarray]:
    import jax

    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(x)
        for path, x in pairs
    }


def run_training(out: Path, mesh_spec: str, fsdp: bool, seeds, stop: str | None):
    from mechjax.distributed import is_coordinator, make_mesh
    from mechjax.model.sharding import gather
    from mechjax.train import train

    mesh = None if mesh_spec == "none" else make_mesh(mesh_spec)
    resume = stop == "resume"
    stop_after = int(stop) if stop and not resume else None
    result = train(
        toy(),
        train_config(seeds),
        dataset(),
        out,
        mesh=mesh,
        fsdp=fsdp,
        resume=resume,
        stop_after=stop_after,
        finalize=stop_after is None,
    )
    params = result.state.params if mesh is None else gather(result.state.params, mesh)
    specs = [str(getattr(x.sharding, "spec", None)) for x in _leaves(result.state.params)]
    if is_coordinator():
        np.savez(out / "params.npz", **flat(params), specs=np.asarray(specs))


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def run_analyses(out: Path, mesh_spec: str):
    import jax

    import mechjax as mj
    from mechjax.causal.sweep import map_cells
    from mechjax.distributed import make_mesh
    from mechjax.model.sharding import shard_params, use_mesh

    cfg = toy()
    mesh = make_mesh(mesh_spec)
    params = mj.init_params(jax.random.PRNGKey(0), cfg)
    sharded = shard_params(params, mesh, fsdp=True)
    clean = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (4, 12), 0, cfg.d_vocab))
    corrupted = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (4, 12), 0, cfg.d_vocab))
    results = {}
    for name, p in (("plain", params), ("sharded", sharded)):
        with use_mesh(mesh if name == "sharded" else None):
            logits, stream = mj.run_with_stream(p, clean, cfg, capture=["resid_post", "pattern"])
            resid = mj.causal.activation_patching(
                p, cfg, clean, corrupted, "resid_pre", answers=(1, 2), chunk_size=5
            )
            heads = mj.causal.activation_patching(
                p, cfg, clean, corrupted, "z", over=("layer", "head"), answers=(1, 2)
            )
        results[f"{name}/logits"] = np.asarray(logits)
        results[f"{name}/resid_post"] = np.asarray(stream["resid_post"])
        results[f"{name}/pattern"] = np.asarray(stream["pattern"])
        results[f"{name}/sweep_resid"] = np.asarray(resid.raw)
        results[f"{name}/sweep_heads"] = np.asarray(heads.raw)
    # 16-bit weights big enough to go to the forward as their bits (params.weight_bits)
    # stay split when sharded: the vocabulary over `model`
    big = mj.presets.attn_only(2, d_model=128, n_heads=4, d_vocab=8192, n_ctx=32)
    big = big.replace(dtype="bfloat16")
    big_params = jax.tree_util.tree_map(
        lambda x: x.astype("bfloat16"), mj.init_params(jax.random.PRNGKey(3), big)
    )
    big_sharded = shard_params(big_params, mesh)
    results["plain/bf16_logits"] = np.asarray(mj.forward(big_params, clean, big))
    results["sharded/bf16_logits"] = np.asarray(mj.forward(big_sharded, clean, big))
    results["W_E_spec"] = np.asarray(str(big_sharded["W_E"].sharding.spec))
    results["W_Q_spec"] = np.asarray(str(sharded["blocks"]["W_Q"].sharding.spec))
    # the sweeps' cells are split over the data axis, not run whole on every device
    with use_mesh(mesh):
        cells = jax.jit(lambda c: map_cells(lambda x: x * 2, c, None))(np.arange(8.0))
    results["cells_spec"] = np.asarray(str(cells.sharding.spec))
    results["n_devices"] = np.asarray(len(jax.devices()))
    np.savez(out / "analyses.npz", **results)


def main(argv: list[str]) -> None:
    if os.environ.get("MECHJAX_COORDINATOR"):
        from mechjax.distributed import initialize

        initialize()
    kind, out = argv[0], Path(argv[1])
    if kind == "train":
        mesh_spec, fsdp, seeds = argv[2], argv[3] == "1", [int(s) for s in argv[4].split(",")]
        run_training(out, mesh_spec, fsdp, seeds, argv[5] if len(argv) > 5 else None)
    elif kind == "analyses":
        out.mkdir(parents=True, exist_ok=True)
        run_analyses(out, argv[2])
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
