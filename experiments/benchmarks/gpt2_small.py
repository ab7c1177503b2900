"""GPT-2 small: mechjax against TransformerLens on the same weights.

    python experiments/benchmarks/gpt2_small.py            the real size (idle machine)
    python experiments/benchmarks/gpt2_small.py --quick    a 2-layer, narrow smoke run

GPT-2 small (`mj.presets.gpt2()`: 12 layers, d_model 768, 12 heads, d_mlp 3072,
vocabulary 50,257, learned positions, LayerNorm, GELU-tanh, biases, tied unembedding)
with random weights drawn once in numpy; TransformerLens's model is built from them
offline with `mechjax.io.to_hooked_transformer` (its own loader needs the hub). Rows:

* forward: logits of a batch (`mj.forward` vs `HookedTransformer.__call__`);
* resid sweep: denoising activation patching of `resid_pre` over every (layer, position)
  (`activation_patching` vs `patching.get_act_patch_resid_pre`);
* heads sweep: every (layer, head) of `z` at all positions
  (`activation_patching` vs `patching.get_act_patch_attn_head_out_all_pos`).

The metric is the logit difference between a correct and a wrong token at the last
position. Each (row, implementation) runs in a fresh worker process (`common.py`);
mechjax's compile time (first call minus median) is its own column. Before the table,
the two implementations' outputs are compared.
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
    worker_main,
)

SIZES = {
    "full": dict(forward=(8, 128), sweep=(2, 16), repeats=3, tl_repeats=2),
    "quick": dict(forward=(2, 16), sweep=(2, 8), repeats=2, tl_repeats=1),
}
ROWS = {  # row -> (mechjax site, swept axes, TransformerLens function); forward: None
    "forward": None,
    "resid sweep": ("resid_pre", ("layer", "pos"), "get_act_patch_resid_pre"),
    "heads sweep": ("z", ("layer", "head"), "get_act_patch_attn_head_out_all_pos"),
}
IMPLS = ("mechjax", "transformer_lens")


def model_config(quick: bool):
    import mechjax as mj

    cfg = mj.presets.gpt2()
    return (
        cfg.replace(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_head=16, d_mlp=256)
        if quick
        else cfg
    )


def _setup(spec: dict):
    cfg = model_config(spec["quick"])
    rng = np.random.default_rng(1)
    batch, n_pos = spec["shape"]
    clean, corrupted = rng.integers(0, cfg.d_vocab, size=(2, batch, n_pos))
    correct, wrong = rng.choice(cfg.d_vocab, size=(2, batch))
    return cfg, numpy_params(cfg, seed=0), clean, corrupted, correct, wrong


def mechjax_worker(spec: dict) -> dict:
    import jax.numpy as jnp

    import mechjax as mj
    from mechjax.causal import activation_patching

    init_jax_runtime()
    memory = PeakMemory()
    cfg, params, clean, corrupted, correct, wrong = _setup(spec)
    params = {
        k: (jnp.asarray(v) if k != "blocks" else {n: jnp.asarray(a) for n, a in v.items()})
        for k, v in params.items()
    }
    row = ROWS[spec["row"]]
    if row is None:

        def call():
            return mj.forward(params, clean, cfg)[:, -1]
    else:
        site, over, _ = row

        def call():
            answers = (jnp.asarray(correct), jnp.asarray(wrong))
            return activation_patching(
                params, cfg, clean, corrupted, site, over, answers=answers
            ).raw

    timing = time_calls(jax_blocking(call), warmup=2, repeats=spec["repeats"])
    return {
        "timing": timing.to_dict(),
        "compile_s": timing.compile_s,
        "out": np.asarray(call(), np.float64).tolist(),
        "peak_mib": memory.delta_mib(),
    }


def transformer_lens_worker(spec: dict) -> dict:
    os.environ["TQDM_DISABLE"] = "1"
    import torch
    from transformer_lens import patching

    from mechjax.io import to_hooked_transformer

    threads = init_torch_runtime()
    memory = PeakMemory()
    cfg, params, clean, corrupted, correct, wrong = _setup(spec)
    model = to_hooked_transformer(params, cfg)
    clean_t, corrupted_t = torch.as_tensor(clean), torch.as_tensor(corrupted)
    correct_t, wrong_t = torch.as_tensor(correct)[:, None], torch.as_tensor(wrong)[:, None]
    row = ROWS[spec["row"]]

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(-1, correct_t) - last.gather(-1, wrong_t)).mean()

    if row is None:

        def call():
            with torch.no_grad():
                return model(clean_t)[:, -1]
    else:
        tl_sweep = getattr(patching, row[2])

        def call():
            with torch.no_grad():
                _, cache = model.run_with_cache(clean_t)
                return tl_sweep(model, corrupted_t, cache, metric)

    timing = time_calls(call, warmup=1, repeats=spec["tl_repeats"])
    return {
        "timing": timing.to_dict(),
        "out": call().double().numpy().tolist(),
        "peak_mib": memory.delta_mib(),
        **threads,
    }


CASES = {}
for _row in ROWS:
    CASES[f"{_row}/mechjax"] = mechjax_worker
    CASES[f"{_row}/transformer_lens"] = transformer_lens_worker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a 2-layer, narrow smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(CASES, args.worker)
        return 0
    size = SIZES["quick" if args.quick else "full"]
    print("# GPT-2 small: mechjax vs TransformerLens" + (" (--quick)" if args.quick else ""))
    print()
    print("\n".join(machine_header(["jax", "torch", "transformer-lens", "numpy"])))
    print()
    rows, checks = [], []
    for row in ROWS:
        shape = size["forward"] if ROWS[row] is None else size["sweep"]
        spec = dict(size, row=row, case=row, shape=shape, quick=args.quick)
        results = {}
        for impl in IMPLS:
            spec["impl"] = impl
            print(f"running {row}/{impl} ...", file=sys.stderr, flush=True)
            results[impl] = run_worker(__file__, spec)
        ours, theirs = results["mechjax"], results["transformer_lens"]
        a, b = np.asarray(ours["out"]), np.asarray(theirs["out"])
        checks.append(
            f"- {row}: output {list(a.shape)}, max |mechjax - TL| = {np.abs(a - b).max():.2e} "
            f"(values span {b.min():.3f} .. {b.max():.3f})"
        )
        ours_s, theirs_s = ours["timing"]["median_s"], theirs["timing"]["median_s"]
        speed, _ = fmt_ratio(1 / ours_s, 1 / theirs_s, 1.0)
        rows.append(
            [
                f"{row} (batch {shape[0]} x {shape[1]})",
                fmt_s(ours_s, 3),
                fmt_s(ours["compile_s"], 2),
                fmt_s(theirs_s, 3),
                speed,
                f"{ours['peak_mib']:.0f} / {theirs['peak_mib']:.0f}",
            ]
        )
    print("Agreement (same weights, same tokens):")
    print("\n".join(checks))
    print()
    headers = ["row", "mechjax median s", "mechjax compile s", "TL median s", "speed", "peak MiB"]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
