"""Activation-patching sweeps: mechjax against TransformerLens, same weights, same tokens.

    python experiments/benchmarks/patching.py            real sizes (run on an idle machine)
    python experiments/benchmarks/patching.py --quick    tiny sizes, a smoke run

Two sweeps, each in denoising form (the corrupted run with one clean activation patched
in; the metric is the logit difference between a correct and a wrong token at the last
position, averaged over the batch), on sequences of 64 tokens:

* resid: every (layer, position) of the residual stream before each block;
  mechjax `activation_patching(..., "resid_pre", over=("layer", "pos"))` vs
  TransformerLens `patching.get_act_patch_resid_pre`;
* heads: every (layer, head), the head's output at all positions (`z`);
  mechjax `activation_patching(..., "z", over=("layer", "head"))` vs TransformerLens
  `patching.get_act_patch_attn_head_out_all_pos` (which patches `hook_z`).

for two models:

* toy: the benchmarks' 2-layer attention-only toy (`common.toy_config`: d_model 128,
  8 heads, pre-LayerNorm, learned positions, biases; vocabulary 512);
* mlp6: a 6-layer model with MLPs (d_model 256, 8 heads of 32, d_mlp 1024, GELU,
  pre-LayerNorm, learned positions, biases; vocabulary 512).

Each (model, sweep, implementation) runs in its own fresh worker process (protocol in
`common.py`) on the same numpy-drawn weights; the TransformerLens model is built from
them with `mechjax.io.to_hooked_transformer`. A timed call is the whole
operation from tokens to the result grid: for mechjax one `activation_patching` call
(it runs the clean and corrupted inputs itself), for TransformerLens `run_with_cache` on
the clean tokens plus the sweep. mechjax's compile time (first call minus median) is
reported separately. Before the table, the two grids of every row are compared (max
abs difference). Target: mechjax >= 10x TransformerLens on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PeakMemory,
    fmt_ratio,
    fmt_s,
    init_jax_runtime,
    init_torch_runtime,
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
    "full": {
        "toy": dict(d_model=128, n_heads=8, d_vocab=512),
        "mlp6": dict(d_model=256, n_heads=8, d_mlp=1024, n_layers=6, d_vocab=512),
        "n_pos": 64,
        "batch": 8,
        "warmup": 2,
        "repeats": 5,
        "tl_repeats": 3,
    },
    "quick": {
        "toy": dict(d_model=32, n_heads=4, d_vocab=64),
        "mlp6": dict(d_model=32, n_heads=4, d_mlp=64, n_layers=6, d_vocab=64),
        "n_pos": 12,
        "batch": 2,
        "warmup": 1,
        "repeats": 2,
        "tl_repeats": 1,
    },
}
MODELS = ("toy", "mlp6")
SWEEPS = {  # sweep -> (mechjax site, swept axes, TransformerLens function)
    "resid": ("resid_pre", ("layer", "pos"), "get_act_patch_resid_pre"),
    "heads": ("z", ("layer", "head"), "get_act_patch_attn_head_out_all_pos"),
}
IMPLS = ("mechjax", "transformer_lens")
SPEED_TARGET = 10.0


def model_config(name: str, size: dict, n_pos: int):
    import mechjax as mj

    if name == "toy":
        return toy_config(size["d_model"], size["n_heads"], n_pos, size["d_vocab"])
    return mj.ModelConfig(
        name="mlp6",
        d_vocab=size["d_vocab"],
        d_model=size["d_model"],
        n_layers=size["n_layers"],
        n_heads=size["n_heads"],
        d_head=size["d_model"] // size["n_heads"],
        n_ctx=n_pos,
        d_mlp=size["d_mlp"],
        act_fn="gelu",
        normalization="layernorm",
        positional="learned",
        use_attn_bias=True,
        use_mlp_bias=True,
        use_unembed_bias=True,
    )


def inputs(spec: dict):
    """(clean, corrupted) tokens [batch, pos] and (correct, wrong) answer ids [batch]:
    independent uniform draws, the same in every worker."""
    rng = np.random.default_rng(spec["seed"])
    shape = (spec["batch"], spec["n_pos"])
    vocab = spec["size"]["d_vocab"]
    clean, corrupted = rng.integers(0, vocab, size=(2, *shape))
    correct, wrong = rng.choice(vocab, size=(2, spec["batch"]))
    return clean, corrupted, correct, wrong


# -- workers ------------------------------------------------------------------------------------


def _setup(spec: dict):
    cfg = model_config(spec["model"], spec["size"], spec["n_pos"])
    return cfg, numpy_params(cfg, seed=spec["seed"]), *inputs(spec)


def mechjax_worker(spec: dict) -> dict:
    import jax.numpy as jnp

    from mechjax.causal import activation_patching

    init_jax_runtime()
    memory = PeakMemory()
    cfg, params, clean, corrupted, correct, wrong = _setup(spec)
    params = {
        k: (jnp.asarray(v) if k != "blocks" else {n: jnp.asarray(a) for n, a in v.items()})
        for k, v in params.items()
    }
    site, over, _ = SWEEPS[spec["sweep"]]
    answers = (jnp.asarray(correct), jnp.asarray(wrong))

    def sweep():
        return activation_patching(
            params,
            cfg,
            clean,
            corrupted,
            site,
            over,
            answers=answers,
            chunk_size=spec.get("chunk_size"),
        ).raw

    timing = time_calls(jax_blocking(sweep), warmup=spec["warmup"], repeats=spec["repeats"])
    peak = memory.delta_mib()
    steady = PeakMemory()  # one more call, compiled: what a sweep itself needs
    grid = np.asarray(jax_blocking(sweep)())
    return {
        "timing": timing.to_dict(),
        "compile_s": timing.compile_s,
        "grid": grid.tolist(),
        "peak_mib": peak,
        "steady_mib": steady.delta_mib(),
    }


def transformer_lens_worker(spec: dict) -> dict:
    os.environ["TQDM_DISABLE"] = "1"  # TransformerLens draws a progress bar per sweep
    import torch
    from transformer_lens import patching

    from mechjax.io import to_hooked_transformer

    threads = init_torch_runtime()
    memory = PeakMemory()
    cfg, params, clean, corrupted, correct, wrong = _setup(spec)
    model = to_hooked_transformer(params, cfg)
    _, _, tl_name = SWEEPS[spec["sweep"]]
    tl_sweep = getattr(patching, tl_name)
    clean_t, corrupted_t = torch.as_tensor(clean), torch.as_tensor(corrupted)
    correct_t, wrong_t = torch.as_tensor(correct)[:, None], torch.as_tensor(wrong)[:, None]

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(-1, correct_t) - last.gather(-1, wrong_t)).mean()

    def sweep():
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean_t)
            return tl_sweep(model, corrupted_t, clean_cache, metric)

    timing = time_calls(sweep, warmup=1, repeats=spec["tl_repeats"])
    peak = memory.delta_mib()
    steady = PeakMemory()
    grid = sweep().numpy()
    return {
        "timing": timing.to_dict(),
        "grid": grid.tolist(),
        "peak_mib": peak,
        "steady_mib": steady.delta_mib(),
        **threads,
    }


CASES = {}
for _model in MODELS:
    for _sweep in SWEEPS:
        CASES[f"{_model}/{_sweep}/mechjax"] = mechjax_worker
        CASES[f"{_model}/{_sweep}/transformer_lens"] = transformer_lens_worker


# -- the parent ----------------------------------------------------------------------------------


def _median(result: dict) -> float | None:
    return result["timing"]["median_s"] if result else None


def _mib(result: dict, key: str = "peak_mib") -> str:
    return f"{result[key]:.0f}" if result else "n/a"


def describe(model: str, size: dict) -> str:
    if model == "toy":
        return f"2-layer attn-only, d_model {size['d_model']}, {size['n_heads']} heads"
    return (
        f"{size['n_layers']}-layer MLP, d_model {size['d_model']}, {size['n_heads']} heads, "
        f"d_mlp {size['d_mlp']}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {MODELS}")
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"subset of {tuple(SWEEPS)}")
    parser.add_argument("--batch", type=int, help="prompts per run (default 8; quick 2)")
    parser.add_argument("--repeats", type=int, help="timed calls (mechjax)")
    parser.add_argument("--tl-repeats", type=int, help="timed calls (TransformerLens)")
    parser.add_argument(
        "--chunk-size",
        type=lambda v: v if v in ("auto", "none") else int(v),
        default="auto",
        help="mechjax cells per vmapped chunk: auto (the default), an int, or none (one vmap)",
    )
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help=f"subset of {IMPLS} (e.g. mechjax alone)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(CASES, args.worker)
        return 0

    sizes = SIZES["quick" if args.quick else "full"]
    models = [m for m in args.models.split(",") if m]
    sweeps = [s for s in args.sweeps.split(",") if s]
    impls = [i for i in args.impls.split(",") if i]
    bad = [m for m in models if m not in MODELS] + [s for s in sweeps if s not in SWEEPS]
    bad += [i for i in impls if i not in IMPLS]
    if bad or not impls:
        raise ValueError(
            f"unknown models/sweeps/implementations {bad}; models {MODELS}, sweeps "
            f"{tuple(SWEEPS)}, implementations {IMPLS}"
        )
    base = {
        "n_pos": sizes["n_pos"],
        "batch": args.batch or sizes["batch"],
        "warmup": sizes["warmup"],
        "repeats": args.repeats or sizes["repeats"],
        "tl_repeats": args.tl_repeats or sizes["tl_repeats"],
        "chunk_size": None if args.chunk_size == "none" else args.chunk_size,
        "seed": 0,
    }

    print(
        "# Activation patching: mechjax vs TransformerLens" + (" (--quick)" if args.quick else "")
    )
    print()
    print("\n".join(machine_header(["jax", "torch", "transformer-lens", "numpy"])))
    print(
        f"- inputs: batch {base['batch']} x {base['n_pos']} tokens (clean and corrupted), "
        "logit-difference metric at the last position; denoising; mechjax chunk_size "
        f"{base['chunk_size']}"
    )
    print()

    rows, checks = [], []
    for model in models:
        for sweep in sweeps:
            spec = {**base, "model": model, "sweep": sweep, "size": sizes[model]}
            spec["case"] = f"{model}/{sweep}"
            results = {}
            for impl in impls:
                spec["impl"] = impl
                print(f"running {spec['case']}/{impl} ...", file=sys.stderr, flush=True)
                results[impl] = run_worker(__file__, spec)
            ours, theirs = results.get("mechjax", {}), results.get("transformer_lens", {})
            grids = [np.asarray(r["grid"]) for r in (ours, theirs) if r]
            if len(grids) == 2:
                a, b = grids
                diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
                checks.append(
                    f"- {model}/{sweep}: grid {list(a.shape)}, max |mechjax - TL| = {diff:.2e} "
                    f"(metric values span {b.min():.3f} .. {b.max():.3f})"
                )
            ours_s, theirs_s = _median(ours), _median(theirs)
            speed, target = fmt_ratio(
                ours_s and 1 / ours_s, theirs_s and 1 / theirs_s, SPEED_TARGET
            )
            rows.append(
                [
                    f"{model} ({describe(model, sizes[model])})",
                    f"{sweep} ({' x '.join(SWEEPS[sweep][1])}, {grids[0].size} cells)",
                    fmt_s(ours_s, 3),
                    fmt_s(ours.get("compile_s"), 2),
                    fmt_s(theirs_s, 3),
                    speed,
                    target,
                    " / ".join(_mib(r) for r in (ours, theirs)),
                    " / ".join(_mib(r, "steady_mib") for r in (ours, theirs)),
                ]
            )

    print("Agreement (same weights, same tokens):")
    print("\n".join(checks) if checks else "- (needs both implementations)")
    print()
    headers = [
        "model",
        "sweep",
        "mechjax median s",
        "mechjax compile s",
        "TL median s",
        "speed-up",
        "target",
        "peak RSS delta MiB (mechjax / TL)",
        "steady-state peak MiB (mechjax / TL)",
    ]
    print(markdown_table(headers, rows))
    print()
    print(
        "Medians after warm-up; a TL call is run_with_cache(clean) + the sweep, a mechjax "
        "call is one activation_patching call (which runs clean and corrupted itself). "
        "Peak RSS delta covers the whole worker (mechjax's includes compiling); the "
        "steady-state peak is one more call after the timed ones, its own high-water mark."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
