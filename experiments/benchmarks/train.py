"""Training speed and peak memory: mechjax against TransformerLens, and the cost of tracking.

    python experiments/benchmarks/train.py            real sizes (run on an idle machine)
    python experiments/benchmarks/train.py --quick    tiny sizes, a smoke run

Rows (each in its own fresh worker process; see common.py for the protocol):

step: training throughput of a 2-layer attention-only toy (d_model 128 and 256, 8
    heads, vocabulary 512, context 256, batch 32, LayerNorm, learned positions, biases),
    from the same weights on the same token batches. mechjax: `make_train_step` on
    `init_states` (one model; its params replaced by the shared weights). TransformerLens:
    `HookedTransformer` (built with `to_hooked_transformer`) + `torch.optim.AdamW`. Both:
    AdamW lr 1e-3 (constant), betas (0.9, 0.98), eps 1e-8, weight decay 0.01 on the same
    parameters, global-norm clipping at 1.0, mean next-token cross-entropy. Each step
    ends with the loss on the host. The losses of the first steps are compared.
track: wall time of `mechjax.train.train` (default evaluation and checkpoint schedule,
    `finalize=False`: the one-off export/report at the end is left out) on the `repeated`
    synthetic dataset, against the same steps on the same batches with tracking off (a
    bare loop of the same compiled step), and against the time the `train` process itself
    spent in what that bare loop runs (immune to drift between processes). The workers
    and the table are in train_tracking.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    MEMORY_NOTE,
    PeakMemory,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    fmt_s,
    init_jax_runtime,
    init_torch_runtime,
    machine_header,
    markdown_table,
    numpy_params,
    random_tokens,
    run_worker,
    time_calls,
    toy_config,
    worker_main,
)
from train_tracking import params_diff, track_off, track_on, track_table  # noqa: E402

SIZES = {
    "full": dict(
        d_models=(128, 256),
        n_heads=8,
        n_ctx=256,
        d_vocab=512,
        batch=32,
        warmup=3,
        repeats=20,
        # TrainConfig's default run length: the default schedule spreads its evaluations
        # and checkpoints (log-spaced, dense early) over the whole run
        track_steps=3000,
        dataset={},
    ),
    "quick": dict(
        d_models=(32,),  # one size: the smoke run is mostly process start-up and compiles
        n_heads=4,
        n_ctx=32,
        d_vocab=64,
        batch=4,
        warmup=2,
        repeats=5,
        track_steps=20,
        dataset=dict(min_len=4, max_len=12, max_prefix=4),  # fits context 32
    ),
}
N_BATCHES = 4  # distinct token batches, cycled through by both implementations
N_COMPARED_LOSSES = 5
HYPER = dict(lr=1e-3, b1=0.9, b2=0.98, weight_decay=0.01, grad_clip=1.0)
SPEED_TARGET = 3.0  # mechjax >= 3x TransformerLens's training throughput


def _toy(spec: dict, d_model: int):
    return toy_config(d_model, spec["n_heads"], spec["n_ctx"], spec["d_vocab"])


def _batches(spec: dict) -> np.ndarray:
    """[N_BATCHES, batch, n_ctx] token ids, the same in every worker."""
    return random_tokens(N_BATCHES, spec["batch"], spec["n_ctx"], spec["d_vocab"])


# -- throughput workers -----------------------------------------------------------------------


def _step_mechjax(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from mechjax.train import TrainConfig, init_states, make_train_step

    init_jax_runtime()
    mem = PeakMemory()
    cfg = _toy(spec, spec["d_model"])
    train_cfg = TrainConfig(
        steps=1000, batch_size=spec["batch"], warmup_steps=0, schedule="constant", **HYPER
    )
    start = time.perf_counter()
    states = jax.block_until_ready(init_states(cfg, train_cfg))
    init_s = time.perf_counter() - start
    # the shared weights, on the leading `model` axis (the fresh optimiser state is zeros
    # whatever the weights, so it stays valid)
    shared = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], numpy_params(cfg))
    states = states.replace(params=shared)
    step = make_train_step(cfg, train_cfg)
    pool = [jnp.asarray(b[None], jnp.int32) for b in _batches(spec)]  # [model=1, batch, pos]
    box = {"states": states, "calls": 0}
    losses: list[float] = []

    def call():
        tokens = pool[box["calls"] % len(pool)]
        box["calls"] += 1
        box["states"], loss = step(box["states"], tokens)
        losses.append(float(loss[0]))  # waits for the step

    timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
    return {
        **timing.to_dict(),
        "compile_s": timing.compile_s,
        "init_s": init_s,
        "tokens_per_s": spec["batch"] * spec["n_ctx"] / timing.median_s,
        "peak_mib": mem.delta_mib(),
        "losses": losses,
    }


def _decayed_like_mechjax(name: str, tensor) -> bool:
    """Whether mechjax's optimizer decays the parameter TL calls `name`.

    `make_optimizer` decays leaves with ndim >= 2; block leaves carry a leading `layer`
    axis, so every `blocks.*` parameter is decayed (norm weights and biases included),
    and of the top-level ones only the matrices (W_E, W_pos, W_U).
    """
    return name.startswith("blocks.") or tensor.ndim >= 2


def _step_transformer_lens(spec: dict) -> dict:
    import torch

    from mechjax.io import to_hooked_transformer

    threads = init_torch_runtime()
    mem = PeakMemory()
    cfg = _toy(spec, spec["d_model"])
    model = to_hooked_transformer(numpy_params(cfg), cfg).train()
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if _decayed_like_mechjax(n, p)]},
        {"params": [p for n, p in named if not _decayed_like_mechjax(n, p)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=HYPER["lr"],
        betas=(HYPER["b1"], HYPER["b2"]),
        eps=1e-8,
        weight_decay=HYPER["weight_decay"],
    )
    pool = [torch.from_numpy(b) for b in _batches(spec)]
    calls = [0]
    losses: list[float] = []

    def call():
        tokens = pool[calls[0] % len(pool)]
        calls[0] += 1
        loss = model(tokens, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["grad_clip"])
        optimizer.step()
        losses.append(loss.item())

    timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
    return {
        **timing.to_dict(),
        "compile_s": None,
        "init_s": None,
        "tokens_per_s": spec["batch"] * spec["n_ctx"] / timing.median_s,
        "peak_mib": mem.delta_mib(),
        "losses": losses,
        **threads,
    }


WORKERS = {
    "step/mechjax": _step_mechjax,
    "step/transformer_lens": _step_transformer_lens,
    "track/on": track_on,
    "track/off": track_off,
}


# -- the parent -----------------------------------------------------------------------------------


def _step_table(results: dict, sizes: dict) -> tuple[str, list[str]]:
    headers = [
        "implementation",
        "d_model",
        "tokens/s",
        "ms / step (median)",
        "compile s",
        "init_states s",
        "peak RSS Δ MiB",
        "speed-up vs TL",
        "target",
    ]
    rows, notes = [], []
    for d_model in sizes["d_models"]:
        ours, theirs = results[("mechjax", d_model)], results[("transformer_lens", d_model)]
        speedup, met = fmt_ratio(ours["tokens_per_s"], theirs["tokens_per_s"], SPEED_TARGET)
        rows.append(
            [
                "mechjax `make_train_step` (jit, vmap over 1 model, donated state)",
                d_model,
                fmt_rate(ours["tokens_per_s"]),
                fmt_ms(ours["median_s"]),
                fmt_s(ours["compile_s"]),
                fmt_s(ours["init_s"]),
                f"{ours['peak_mib']:,.0f}",
                speedup,
                met,
            ]
        )
        rows.append(
            [
                "TransformerLens `HookedTransformer` + `torch.optim.AdamW`",
                d_model,
                fmt_rate(theirs["tokens_per_s"]),
                fmt_ms(theirs["median_s"]),
                "—",
                "—",
                f"{theirs['peak_mib']:,.0f}",
                "1.00x",
                "",
            ]
        )
        n = min(N_COMPARED_LOSSES, len(ours["losses"]), len(theirs["losses"]))
        diff = np.max(np.abs(np.subtract(ours["losses"][:n], theirs["losses"][:n])))
        notes.append(
            f"d_model {d_model}: losses of the first {n} steps, mechjax "
            f"{[round(x, 5) for x in ours['losses'][:n]]}, max |mechjax - TL| = {diff:.1e}"
        )
    return markdown_table(headers, rows), notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, < 1 min)")
    parser.add_argument("--rows", default="step,track", help="comma-separated subset of step,track")
    parser.add_argument("--d-models", help="comma-separated d_model values of the step rows")
    parser.add_argument("--repeats", type=int, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed steps before timing (incl. first)")
    parser.add_argument("--track-steps", type=int, help="steps of the tracking rows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(WORKERS, args.worker)
        return

    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - {"step", "track"}:
        parser.error(f"unknown rows {sorted(set(rows) - {'step', 'track'})}; use step,track")
    mode = "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    if args.d_models:
        sizes["d_models"] = tuple(int(x) for x in args.d_models.split(","))
    for name in ("repeats", "warmup", "track_steps"):
        if getattr(args, name):
            sizes[name] = getattr(args, name)

    print(f"# Training benchmark ({mode} sizes)\n")
    for line in machine_header(["jax", "jaxlib", "optax", "torch", "transformer-lens"]):
        print(line)
    print(
        f"- model: 2-layer attention-only, d_model {', '.join(map(str, sizes['d_models']))}, "
        f"{sizes['n_heads']} heads, vocabulary {sizes['d_vocab']}, context {sizes['n_ctx']}, batch "
        f"{sizes['batch']}, LayerNorm, learned positions, biases; float32"
    )
    print(
        "- optimizer (both): AdamW lr 1e-3 constant, betas (0.9, 0.98), eps 1e-8, weight "
        "decay 0.01 on the parameters mechjax decays, global-norm clip 1.0"
    )
    print(
        f"- timing: median of {sizes['repeats']} steps after {sizes['warmup']} warm-up steps "
        "(the first one alone gives compile s = first - median)"
    )
    print(f"{MEMORY_NOTE} (weights and optimizer state included)\n")

    script = os.path.abspath(__file__)
    base = {k: v for k, v in sizes.items() if k != "d_models"}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mechjax-bench-") as tmpdir:
        base["tmpdir"] = tmpdir
        if "step" in rows:
            for d_model in sizes["d_models"]:
                for impl in ("mechjax", "transformer_lens"):
                    print(f"running step/{impl} d_model={d_model} ...", end=" ", flush=True)
                    spec = dict(base, case="step", impl=impl, d_model=d_model)
                    results[(impl, d_model)] = run_worker(script, spec)
                    print(f"{results[(impl, d_model)]['process_wall_s']:.1f} s (whole process)")
        if "track" in rows:
            for impl in ("off", "on"):
                print(
                    f"running track/{impl} ({sizes['track_steps']} steps) ...", end=" ", flush=True
                )
                spec = dict(base, case="track", impl=impl, d_model=sizes["d_models"][0], **HYPER)
                results[("track", impl)] = run_worker(script, spec)
                print(f"{results[('track', impl)]['process_wall_s']:.1f} s (whole process)")
            max_param_diff = params_diff(tmpdir)

    print()
    if "step" in rows:
        print("## Training throughput\n")
        table, notes = _step_table(results, sizes)
        print(table + "\n")
        for note in notes:
            print(f"- {note}")
        threads = {
            (r["torch_threads"], r["torch_interop"])
            for r in results.values()
            if "torch_threads" in r
        }
        for intra, inter in sorted(threads):
            print(
                f"- torch threads in the TransformerLens workers: intra-op {intra}, "
                f"inter-op {inter}"
            )
        print()
    if "track" in rows:
        print(f"## Tracking overhead (d_model {sizes['d_models'][0]}, `repeated` dataset)\n")
        table, notes = track_table(results[("track", "on")], results[("track", "off")])
        print(table + "\n")
        for note in notes:
            print(f"- {note}")
        print(
            f"- final parameters, train() vs bare loop: max |Δ| = {max_param_diff:.1e} (0 means "
            "the bare loop ran exactly the same updates)"
        )
        print(
            f"- peak RSS Δ: train() {results[('track', 'on')]['peak_mib']:,.0f} MiB, bare loop "
            f"{results[('track', 'off')]['peak_mib']:,.0f} MiB"
        )
    print(f"- load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
