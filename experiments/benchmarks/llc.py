"""LLC estimation: mechjax against devinterp on the same trained model and sequences.

    python experiments/benchmarks/llc.py            8 chains x 200 draws (idle machine)
    python experiments/benchmarks/llc.py --quick    2 chains x 20 draws, a smoke run

The model is the shipped `checkpoints/attn2` (2-layer attention-only, d_model 64), the
data 512 held-out sequences of its preset's dataset (64 tokens), minibatches of 32,
ε = 1e-4, nβ = 32 / ln 32, γ = 100. devinterp (its `llc`, SGLD, chains one after
another) runs the TransformerLens conversion of the same weights. mechjax runs all
chains in one compiled call, twice in the same process (the first call includes
compilation), in two modes: as devinterp does the work (`paired=False, mala=False`:
one gradient per step) and with its defaults (the paired reference loss and the MALA
acceptance: one more forward and one more gradient per step). Each row is a fresh
worker process; the table gives the estimate, its standard error over chains and the
seconds per estimate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    init_jax_runtime,
    init_torch_runtime,
    machine_header,
    markdown_table,
    run_worker,
    worker_main,
)

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"full": dict(chains=8, draws=200), "quick": dict(chains=2, draws=20)}
EPS, GAMMA, BATCH = 1e-4, 100.0, 32


def _model_and_tokens():
    sys.path.insert(0, str(ROOT))
    from mechjax.io import load_model
    from mechjax.train import build_from_spec
    from toy_models import load_preset

    params, cfg = load_model(ROOT / "checkpoints" / "attn2")
    _, _, dataset = build_from_spec(load_preset("attn2"))
    tokens = np.asarray(dataset.eval_batches(32, 16)).reshape(-1, dataset.n_ctx)[:512]
    return params, cfg, tokens


def worker_mechjax(spec: dict) -> dict:
    import jax

    from mechjax.dynamics.llc import SGLDConfig
    from mechjax.dynamics.model_llc import model_llc

    init_jax_runtime()
    params, cfg, tokens = _model_and_tokens()
    size = SIZES[spec["size"]]
    lean = spec["mode"] == "lean"
    config = SGLDConfig(
        step_size=EPS, nbeta=BATCH / np.log(BATCH), localization=GAMMA,
        n_chains=size["chains"], n_draws=size["draws"], batch_size=BATCH,
        paired=not lean, mala=not lean,
    )  # fmt: skip
    times, results = [], []
    for seed in (0, 1):
        start = time.perf_counter()
        results.append(model_llc(params, cfg, tokens, jax.random.key(seed), config))
        times.append(time.perf_counter() - start)
    r = results[1]
    return {"llc": r.llc_mean, "se": r.llc_se, "first_s": times[0], "s": times[1]}


def worker_devinterp(spec: dict) -> dict:
    init_torch_runtime()
    import datasets
    from devinterp.slt.llc import llc

    from mechjax.io.transformer_lens import to_hooked_transformer

    params, cfg, tokens = _model_and_tokens()
    size = SIZES[spec["size"]]
    data = datasets.Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    model = to_hooked_transformer(params, cfg)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = llc(
            model, data, {}, lr=EPS, n_beta=BATCH / np.log(BATCH), localization=GAMMA,
            num_chains=size["chains"], num_draws=size["draws"], batch_size=BATCH,
            output_path=f"{tmp}/samples.zarr", device="cpu",
        )  # fmt: skip
        seconds = time.perf_counter() - start
    chains = np.asarray(out.llc_per_chain.values, np.float64)
    return {
        "llc": float(chains.mean()),
        "se": float(chains.std(ddof=1) / np.sqrt(len(chains))),
        "first_s": seconds,
        "s": seconds,
    }


CASES = {"llc/mechjax": worker_mechjax, "llc/devinterp": worker_devinterp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(CASES, args.worker)
        return
    size = "quick" if args.quick else "full"
    print("\n".join(machine_header(["jax", "torch", "devinterp"])))
    print(f"\n{SIZES[size]['chains']} chains x {SIZES[size]['draws']} draws, batch {BATCH}\n")
    devinterp = run_worker(__file__, {"case": "llc", "impl": "devinterp", "size": size})
    rows = []
    for mode, label in (("lean", "mechjax, devinterp's work"), ("full", "mechjax, defaults")):
        r = run_worker(__file__, {"case": "llc", "impl": "mechjax", "size": size, "mode": mode})
        rows.append([
            label, f"{r['llc']:.3f} ± {r['se']:.3f}", f"{r['first_s']:.1f}", f"{r['s']:.1f}",
            f"{devinterp['s'] / r['s']:.1f}x",
        ])  # fmt: skip
    rows.append([
        "devinterp", f"{devinterp['llc']:.3f} ± {devinterp['se']:.3f}",
        f"{devinterp['s']:.1f}", f"{devinterp['s']:.1f}", "1.0x",
    ])  # fmt: skip
    headers = ["implementation", "LLC ± se", "first call s", "s per estimate", "vs devinterp"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
