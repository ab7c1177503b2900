"""More than one device: a training step and a patching sweep on 1, 2 and 4 devices.

    python experiments/benchmarks/sharding.py            real sizes (run on an idle machine)
    python experiments/benchmarks/sharding.py --quick    tiny sizes, a smoke run

On a CPU the devices are host devices (`--xla_force_host_platform_device_count=N`, set
in each worker before JAX starts): N XLA devices sharing this machine's cores. The
point on such a machine is correctness and overhead, not speed: with 2 physical cores,
4 devices cannot be faster than 1, and the rows show what splitting costs. On a machine
with N GPUs (`jax.devices()` lists them; no flag) the same rows measure real scaling.

Rows, each in its own fresh worker process (protocol in `common.py`):

* train: the compiled training step of the benchmarks' 2-layer attention-only toy
  (`common.toy_config`, d_model 128, 8 heads, vocabulary 512) on a batch of 32 x 256
  tokens, AdamW, on a mesh `data=N` (parameters replicated) and `data=N` with FSDP
  (parameters and Adam moments split over the devices); tokens/s of the step alone.
* sweep: `activation_patching` of `resid_pre` over (layer, position) on 8 prompts of 64
  tokens, parameters replicated and the cells spread over the mesh's `data` axis
  (`use_mesh`); seconds per sweep.

Before the table, every row's first training loss and sweep grid are compared with the
one-device row (max abs difference).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    fmt_s,
    init_jax_runtime,
    jax_blocking,
    machine_header,
    markdown_table,
    numpy_params,
    run_worker,
    time_calls,
    toy_config,
    worker_main,
)

SIZES = {
    "full": dict(d_model=128, n_heads=8, vocab=512, batch=32, n_ctx=256, sweep_batch=8,
                 sweep_pos=64, repeats=10, warmup=3),
    "quick": dict(d_model=32, n_heads=4, vocab=64, batch=8, n_ctx=32, sweep_batch=4,
                  sweep_pos=16, repeats=3, warmup=2),
}  # fmt: skip
DEVICE_COUNTS = (1, 2, 4)


def _setup(spec: dict):
    import jax

    from mechjax.distributed import make_mesh

    init_jax_runtime()
    size = SIZES[spec["size"]]
    assert len(jax.devices()) == spec["devices"], jax.devices()
    cfg = toy_config(size["d_model"], size["n_heads"], size["n_ctx"], size["vocab"])
    return cfg, size, make_mesh(f"data={spec['devices']}")


def worker_train(spec: dict) -> dict:
    import jax

    from mechjax.model.sharding import place
    from mechjax.train.state import TrainConfig, init_states, make_train_step, train_shardings

    cfg, size, mesh = _setup(spec)
    train_cfg = TrainConfig(batch_size=size["batch"], warmup_steps=0)
    shardings = train_shardings(
        jax.eval_shape(lambda: init_states(cfg, train_cfg)), mesh, fsdp=spec["fsdp"]
    )
    state = place(init_states(cfg, train_cfg), shardings.state)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, size["vocab"], (1, size["batch"], size["n_ctx"]), dtype=np.int32)
    batch = place(tokens, shardings.tokens)
    step = make_train_step(cfg, train_cfg, shardings)
    box = {"state": state}
    first_loss = []

    def one():
        box["state"], loss = step(box["state"], batch)
        first_loss.append(float(np.asarray(loss)[0]))
        return loss

    timing = time_calls(jax_blocking(one), warmup=size["warmup"], repeats=size["repeats"])
    tokens_per_step = size["batch"] * size["n_ctx"]
    return {
        "first_loss": first_loss[0],
        "compile_s": timing.compile_s,
        "step_s": timing.median_s,
        "tok_per_s": tokens_per_step / timing.median_s,
    }


def worker_sweep(spec: dict) -> dict:
    import mechjax as mj
    from mechjax.model.sharding import shard_params, use_mesh

    cfg, size, mesh = _setup(spec)
    params = shard_params(numpy_params(cfg), mesh)
    rng = np.random.default_rng(1)
    shape = (size["sweep_batch"], size["sweep_pos"])
    clean = rng.integers(0, size["vocab"], shape, dtype=np.int32)
    corrupted = rng.integers(0, size["vocab"], shape, dtype=np.int32)
    out = {}

    def one():
        with use_mesh(mesh):
            result = mj.causal.activation_patching(
                params, cfg, clean, corrupted, "resid_pre", answers=(1, 2)
            )
        out["grid"] = np.asarray(result.raw)
        return result.raw

    timing = time_calls(jax_blocking(one), warmup=size["warmup"], repeats=size["repeats"])
    return {"compile_s": timing.compile_s, "sweep_s": timing.median_s, "grid": out["grid"].tolist()}


CASES = {"train/mechjax": worker_train, "sweep/mechjax": worker_sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(CASES, args.worker)
        return
    size = "quick" if args.quick else "full"
    print("\n".join(machine_header(["jax", "jaxlib"])))
    print()
    rows, train_ref, sweep_ref, checks = [], None, None, []
    for n in DEVICE_COUNTS:
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        for fsdp in (False, True):
            if fsdp and n == 1:
                continue
            spec = {"case": "train", "impl": "mechjax", "size": size, "devices": n, "fsdp": fsdp}
            r = run_worker(__file__, spec, env=env)
            train_ref = train_ref or r
            checks.append(f"train data={n}{' fsdp' if fsdp else ''}: first loss differs by "
                          f"{abs(r['first_loss'] - train_ref['first_loss']):.1e}")  # fmt: skip
            rows.append([
                "train step", f"data={n}{' fsdp' if fsdp else ''}", f"{r['tok_per_s']:,.0f} tok/s",
                fmt_s(r["step_s"], 3), f"{r['tok_per_s'] / train_ref['tok_per_s']:.2f}x",
                fmt_s(r["compile_s"]),
            ])  # fmt: skip
        spec = {"case": "sweep", "impl": "mechjax", "size": size, "devices": n}
        r = run_worker(__file__, spec, env=env)
        sweep_ref = sweep_ref or r
        diff = np.abs(np.asarray(r["grid"]) - np.asarray(sweep_ref["grid"])).max()
        checks.append(f"sweep data={n}: grid differs by {diff:.1e}")
        rows.append([
            "resid sweep", f"data={n}", "", fmt_s(r["sweep_s"], 3),
            f"{sweep_ref['sweep_s'] / r['sweep_s']:.2f}x", fmt_s(r["compile_s"]),
        ])  # fmt: skip
    print("Agreement with one device:")
    print("\n".join(f"- {line}" for line in checks))
    print()
    headers = ["operation", "mesh", "throughput", "s per call", "speed vs 1 device", "compile s"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
