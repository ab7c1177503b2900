"""A real-size model within memory: Gemma 2 2B (random weights, bf16 safetensors as
published), mechjax against HF transformers, in bfloat16 and in float32.

    python experiments/random_checkpoint.py /tmp/gemma2-2b      # once: ~2 min, 5 GB
    python experiments/benchmarks/full_size.py /tmp/gemma2-2b
    python experiments/benchmarks/full_size.py /tmp/gemma2-2b --rows mechjax   # ours only

Rows, each in its own fresh process (protocol in `common.py`):

* mechjax bf16 / f32: `mechjax.io.load_hf(folder, dtype)` (the streaming loader: shards
  memory-mapped, tensors copied once into their stacked arrays, which JAX adopts without
  a copy); then a forward on 1 x 32 tokens (`mj.forward`: first call, then the median of
  3), `mj.run_with_stream` capturing `resid_post` and `attn_out` at every layer, and a
  denoising patching sweep over every layer's `resid_pre` (all positions at once; 26
  cells, each re-running the blocks from its layer, logit difference at the last token).
  bfloat16 weights compute in float32 on a CPU (`ModelConfig.activation_dtype`).
* mechjax init bf16 / f32: `mj.init_params` of the `gemma2_2b` preset in that dtype.
* HF bf16 / f32: `Gemma2ForCausalLM.from_pretrained(folder, dtype=...)`, eager attention,
  no KV cache, `torch.no_grad`; the same forward.

Memory: *load peak* is the process's peak resident set (VmHWM) during loading (or init)
minus its RSS after imports, as a multiple of the weights' size in that dtype (target
<= 1.25); *peak* is the same mark at the end of the row (forward, capture and sweep
included; target: mechjax <= HF in the same dtype); *peak to forward* is the mark after
load and forward only, the part both libraries do. Mapped file pages count in the mark
while mapped, as in any RSS figure. Speed target: the mechjax forward no slower than HF
float32, in both dtypes. The logits of each row are compared with HF float32's (max abs
difference, printed before the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PeakMemory,
    init_jax_runtime,
    init_torch_runtime,
    machine_header,
    markdown_table,
    run_worker,
    worker_main,
)

N_TOKENS = 32
DTYPES = {"bf16": "bfloat16", "f32": "float32"}


def tokens(d_vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, min(d_vocab, 8000), size=(1, N_TOKENS))


def _gib(mib: float) -> float:
    return mib / 1024


def _median_call(fn, repeats: int = 3) -> tuple[float, float, object]:
    """(first call s, median of `repeats` later calls s, last result)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), out


def mechjax_worker(spec: dict) -> dict:
    import jax

    import mechjax as mj
    from mechjax.causal import activation_patching

    init_jax_runtime()
    memory = PeakMemory()
    start = time.perf_counter()
    params, cfg = mj.io.load_hf(spec["folder"], dtype=DTYPES[spec["case"]])
    load_s = time.perf_counter() - start
    load_peak = memory.delta_mib()
    weights = sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) / 2**20
    toks = tokens(cfg.d_vocab)
    first, warm, logits = _median_call(lambda: jax.block_until_ready(mj.forward(params, toks, cfg)))
    forward_peak = memory.delta_mib()
    start = time.perf_counter()
    _, stream = mj.run_with_stream(params, toks, cfg, capture=("resid_post", "attn_out"))
    jax.block_until_ready(stream["resid_post"])
    capture_s = time.perf_counter() - start
    del stream
    corrupted = np.roll(toks, 1, axis=1)
    start = time.perf_counter()
    grid = activation_patching(
        params, cfg, toks, corrupted, "resid_pre", ("layer",), answers=(5, 7)
    ).raw
    jax.block_until_ready(grid)
    sweep_s = time.perf_counter() - start
    return {
        "load_s": load_s,
        "load_peak_mib": load_peak,
        "weights_mib": weights,
        "forward_first_s": first,
        "forward_s": warm,
        "capture_s": capture_s,
        "sweep_s": sweep_s,
        "forward_peak_mib": forward_peak,
        "peak_mib": memory.delta_mib(),
        "logits": np.asarray(logits, np.float32)[0, -1].tolist(),
        "activation_dtype": cfg.activation_dtype,
    }


def init_worker(spec: dict) -> dict:
    import jax

    import mechjax as mj

    init_jax_runtime()
    memory = PeakMemory()
    cfg = mj.presets.gemma2_2b().replace(dtype=DTYPES[spec["case"]])
    start = time.perf_counter()
    params = jax.block_until_ready(mj.init_params(jax.random.key(0), cfg))
    return {
        "load_s": time.perf_counter() - start,
        "load_peak_mib": memory.delta_mib(),
        "weights_mib": sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) / 2**20,
        "peak_mib": memory.delta_mib(),
    }


def hf_worker(spec: dict) -> dict:
    import torch
    from transformers import Gemma2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    threads = init_torch_runtime()
    memory = PeakMemory()
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[spec["case"]]
    start = time.perf_counter()
    model = Gemma2ForCausalLM.from_pretrained(
        spec["folder"], dtype=dtype, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - start
    load_peak = memory.delta_mib()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    toks = torch.as_tensor(tokens(model.config.vocab_size))

    def forward():
        with torch.no_grad():
            return model(toks, use_cache=False).logits

    first, warm, logits = _median_call(forward)
    forward_peak = memory.delta_mib()
    return {
        "forward_peak_mib": forward_peak,
        "load_s": load_s,
        "load_peak_mib": load_peak,
        "weights_mib": weights,
        "forward_first_s": first,
        "forward_s": warm,
        "peak_mib": memory.delta_mib(),
        "logits": logits[0, -1].float().numpy().tolist(),
        **threads,
    }


CASES = {}
for _d in DTYPES:
    CASES[f"{_d}/mechjax"] = mechjax_worker
    CASES[f"{_d}/mechjax_init"] = init_worker
    CASES[f"{_d}/hf"] = hf_worker
ROWS = {"mechjax": ("mechjax", "mechjax_init"), "hf": ("hf",)}


def _fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="a Gemma 2 HF folder (random_checkpoint.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", default="mechjax,hf", help="mechjax, hf or both")
    parser.add_argument("--dtypes", default="bf16,f32")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(CASES, args.worker)
        return 0
    if not args.folder or not os.path.isdir(args.folder):
        print("error: give the HF folder (python experiments/random_checkpoint.py OUT makes one)")
        return 2
    print("\n".join(machine_header(["jax", "torch", "transformers"])))
    impls = [i for row in args.rows.split(",") for i in ROWS[row]]
    results = {}
    for dtype in args.dtypes.split(","):
        for impl in impls:
            spec = {"case": dtype, "impl": impl, "folder": os.path.abspath(args.folder)}
            print(f"running {dtype}/{impl} ...", flush=True)
            results[(dtype, impl)] = run_worker(__file__, spec, timeout=3600)
    reference = next(
        (np.asarray(r["logits"]) for (d, i), r in results.items() if (d, i) == ("f32", "hf")),
        None,
    )
    print()
    if reference is not None:
        for (dtype, impl), r in results.items():
            if "logits" in r:
                diff = np.abs(np.asarray(r["logits"]) - reference).max()
                print(f"- {dtype}/{impl}: last-token logits vs HF float32, max abs diff {diff:.2e}")
    rows = []
    hf_f32 = results.get(("f32", "hf"), {}).get("forward_s")
    for (dtype, impl), r in results.items():
        ratio = r["load_peak_mib"] / r["weights_mib"]
        rows.append(
            [
                f"{impl} {dtype}",
                _fmt(_gib(r["weights_mib"])),
                _fmt(r["load_s"], 1),
                f"{_gib(r['load_peak_mib']):.2f} ({ratio:.2f}x)",
                _fmt(r.get("forward_first_s")),
                _fmt(r.get("forward_s")),
                _fmt(hf_f32 / r["forward_s"]) if hf_f32 and r.get("forward_s") else "",
                _fmt(r.get("capture_s")),
                _fmt(r.get("sweep_s"), 1),
                _fmt(_gib(r["forward_peak_mib"])) if "forward_peak_mib" in r else "n/a",
                _fmt(_gib(r["peak_mib"])),
            ]
        )
    headers = [
        "row",
        "weights GiB",
        "load s",
        "load peak GiB (x weights)",
        "forward first s",
        "forward s",
        "x HF f32 speed",
        "capture s",
        "sweep s",
        "peak to forward GiB",
        "peak GiB",
    ]
    print(markdown_table(headers, rows))
    print(
        "\nTargets: load/init peak <= 1.25x the weights; peak <= HF's in the same dtype; "
        "forward no slower than HF float32 (x HF f32 speed >= 1)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
