"""Forward-pass speed and peak memory: mechjax against TransformerLens and HF transformers.

    python experiments/benchmarks/forward.py            real sizes (run on an idle machine)
    python experiments/benchmarks/forward.py --quick    tiny sizes, a smoke run

Rows (each implementation of each row runs in its own fresh worker process, on the same
weights and the same tokens; see common.py for the protocol):

(a) toy: a 2-layer attention-only model (d_model 128, 8 heads of d_head 16, vocabulary
    512, context 256, batch 32, pre-LayerNorm, learned positions, biases):
    `mj.forward` (jitted) vs TransformerLens `HookedTransformer.forward` under
    `torch.no_grad`, the TL model built from the same params with
    `mechjax.io.to_hooked_transformer`.
(b) gemma: Gemma 2 at the real 2B widths (d_model 2304, 8 heads, 4 kv heads, head_dim
    256, d_mlp 9216, vocabulary 256,000) with 2 layers (one local, one global), batch
    1 x 128, float32: `mj.forward` vs HF `Gemma2ForCausalLM` (eager attention, no KV
    cache). The weights are written once as an HF folder (`save_pretrained`) and each side
    loads it (`from_pretrained` / `mechjax.io.load_hf`).
(c) capture: the toy of (a) with every activation kept: `mj.run_with_stream(...,
    capture="all")` vs TransformerLens `run_with_cache`; and mechjax's capture overhead
    over its own plain forward of row (a).

Before the table, the logits of the two sides are compared (max abs difference).
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
    gemma2_two_layer,
    init_jax_runtime,
    init_torch_runtime,
    jax_blocking,
    machine_header,
    markdown_table,
    numpy_params,
    random_tokens,
    run_worker,
    time_calls,
    toy_config,
    tree_mib,
    worker_main,
)
from hf_gemma_folder import write_gemma_folder  # noqa: E402

SIZES = {
    "full": {
        "toy": dict(d_model=128, n_heads=8, n_ctx=256, d_vocab=512, batch=32),
        "gemma": dict(batch=1, n_pos=128),
        "warmup": 3,
        "repeats": 10,
        "gemma_repeats": 5,
    },
    "quick": {
        "toy": dict(d_model=32, n_heads=4, n_ctx=32, d_vocab=64, batch=4),
        "gemma": dict(
            batch=1,
            n_pos=16,
            d_model=64,
            n_heads=4,
            n_kv_heads=2,
            d_head=16,
            d_mlp=128,
            d_vocab=1000,
        ),
        "warmup": 2,
        "repeats": 3,
        "gemma_repeats": 3,
    },
}
ROWS = ("toy", "gemma", "capture")
PEERS = {"toy": "transformer_lens", "gemma": "hf", "capture": "transformer_lens"}
SPEED_TARGET = 2.0  # mechjax throughput >= 2x the peer's on every row
CAPTURE_OVERHEAD_TARGET = 0.30  # capture="all" costs < 30% over a plain mechjax forward


# -- the Gemma 2 model ----------------------------------------------------------------------------


# -- workers --------------------------------------------------------------------------------------


def _toy_tokens(sizes: dict) -> np.ndarray:
    return random_tokens(1, sizes["batch"], sizes["n_ctx"], sizes["d_vocab"])[0]


def _gemma_tokens(spec: dict) -> np.ndarray:
    sizes = spec["sizes"]
    return random_tokens(1, sizes["batch"], sizes["n_pos"], spec["d_vocab"])[0]


def _save(spec: dict, what: str, array) -> None:
    np.save(os.path.join(spec["tmpdir"], f"{spec['case']}_{spec['impl']}_{what}.npy"), array)


def _result(spec, timing, tokens_per_call, mem, weights_mib, **extra) -> dict:
    return {
        "case": spec["case"],
        "impl": spec["impl"],
        **timing.to_dict(),
        "compile_s": timing.compile_s,
        "tokens_per_s": tokens_per_call / timing.median_s,
        "peak_mib": mem.delta_mib(),
        "baseline_mib": mem.baseline_mib,
        "weights_mib": weights_mib,
        **extra,
    }


def _toy_mechjax(spec: dict) -> dict:
    """Rows (a) and (c), mechjax side."""
    import jax
    import jax.numpy as jnp

    import mechjax as mj

    init_jax_runtime()
    mem = PeakMemory()
    sizes = spec["sizes"]
    cfg = toy_config(sizes["d_model"], sizes["n_heads"], sizes["n_ctx"], sizes["d_vocab"])
    params = jax.tree_util.tree_map(jnp.asarray, numpy_params(cfg))
    tokens = jnp.asarray(_toy_tokens(sizes), jnp.int32)
    if spec["case"] == "toy":
        call = jax_blocking(lambda: mj.forward(params, tokens, cfg))
    else:
        call = jax_blocking(lambda: mj.run_with_stream(params, tokens, cfg, capture="all"))
    timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
    result = _result(spec, timing, tokens.size, mem, tree_mib(params))
    out = call()  # once more, after the peak was read, for the parity check
    if spec["case"] == "toy":
        _save(spec, "logits", np.asarray(out))
    else:
        logits, stream = out
        _save(spec, "logits", np.asarray(logits))
        _save(spec, "pattern", np.asarray(stream["pattern"][-1, 0]))  # last layer, batch 0
        result.update(captured=len(stream.acts), captured_mib=tree_mib(stream.acts))
        result.update(write_floor_s=_fresh_write_floor(stream, spec))
    return result


def _fresh_write_floor(stream, spec: dict) -> float:
    """Median seconds of a jitted call that only fills fresh arrays shaped like the
    stream's (each buffer once: aliases such as head_writes = head_out share one): the
    least any capture returning those arrays costs, before computing anything."""
    import jax
    import jax.numpy as jnp

    buffers = {id(a): (a.shape, a.dtype) for a in stream.acts.values()}
    fill = jax.jit(lambda x: [jnp.full(shape, x, dtype) for shape, dtype in buffers.values()])
    call = jax_blocking(lambda: fill(1.0))
    return time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"]).median_s


def _toy_transformer_lens(spec: dict) -> dict:
    """Rows (a) and (c), TransformerLens side (same weights via to_hooked_transformer)."""
    import torch

    from mechjax.io import to_hooked_transformer

    threads = init_torch_runtime()
    mem = PeakMemory()
    sizes = spec["sizes"]
    cfg = toy_config(sizes["d_model"], sizes["n_heads"], sizes["n_ctx"], sizes["d_vocab"])
    model = to_hooked_transformer(numpy_params(cfg), cfg)
    weights_mib = tree_mib(dict(model.named_parameters()))
    tokens = torch.from_numpy(_toy_tokens(sizes))
    if spec["case"] == "toy":
        call = lambda: model(tokens)  # noqa: E731
    else:
        call = lambda: model.run_with_cache(tokens)  # noqa: E731
    with torch.no_grad():
        timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
        result = _result(spec, timing, tokens.numel(), mem, weights_mib, **threads)
        out = call()
    if spec["case"] == "toy":
        _save(spec, "logits", out.numpy())
    else:
        logits, cache = out
        _save(spec, "logits", logits.numpy())
        last = cfg.n_layers - 1
        _save(spec, "pattern", cache[f"blocks.{last}.attn.hook_pattern"][0].numpy())
        result.update(captured=len(cache), captured_mib=tree_mib(dict(cache.items())))
    return result


def _gemma_mechjax(spec: dict) -> dict:
    """Row (b), mechjax side: load the HF folder with load_hf, jitted forward."""
    import jax.numpy as jnp

    import mechjax as mj
    from mechjax.io import load_hf

    init_jax_runtime()
    mem = PeakMemory()
    start = time.perf_counter()
    params, cfg = load_hf(spec["folder"])
    load_s = time.perf_counter() - start
    load_peak_mib = mem.delta_mib()
    expected = mj.ModelConfig.from_dict(spec["cfg"])
    if cfg.replace(name=expected.name) != expected:
        got, want = cfg.to_dict(), expected.to_dict()
        diff = {k: (got[k], want[k]) for k in want if k != "name" and got[k] != want[k]}
        raise RuntimeError(f"load_hf gave another config: (loaded, expected) {diff}")
    tokens = jnp.asarray(_gemma_tokens(spec), jnp.int32)
    call = jax_blocking(lambda: mj.forward(params, tokens, cfg))
    timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
    result = _result(
        spec, timing, tokens.size, mem, tree_mib(params), load_s=load_s, load_peak_mib=load_peak_mib
    )
    _save(spec, "logits", np.asarray(call()))
    return result


def _gemma_hf(spec: dict) -> dict:
    """Row (b), HF side: Gemma2ForCausalLM.from_pretrained, float32, eager attention."""
    import torch
    from transformers import Gemma2ForCausalLM

    threads = init_torch_runtime()
    mem = PeakMemory()
    start = time.perf_counter()
    model = Gemma2ForCausalLM.from_pretrained(
        spec["folder"], dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - start
    load_peak_mib = mem.delta_mib()
    weights_mib = tree_mib(dict(model.named_parameters()))
    tokens = torch.from_numpy(_gemma_tokens(spec))

    def call():
        return model(input_ids=tokens, use_cache=False).logits

    with torch.no_grad():
        timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
        result = _result(
            spec,
            timing,
            tokens.numel(),
            mem,
            weights_mib,
            load_s=load_s,
            load_peak_mib=load_peak_mib,
            **threads,
        )
        _save(spec, "logits", call().numpy())
    return result


WORKERS = {
    "toy/mechjax": _toy_mechjax,
    "toy/transformer_lens": _toy_transformer_lens,
    "capture/mechjax": _toy_mechjax,
    "capture/transformer_lens": _toy_transformer_lens,
    "gemma/mechjax": _gemma_mechjax,
    "gemma/hf": _gemma_hf,
}


# -- the parent -----------------------------------------------------------------------------------


def _max_diff(tmpdir: str, case: str, peer: str, what: str) -> float:
    ours = np.load(os.path.join(tmpdir, f"{case}_mechjax_{what}.npy"))
    theirs = np.load(os.path.join(tmpdir, f"{case}_{peer}_{what}.npy"))
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{case} {what}: shapes differ, {ours.shape} vs {theirs.shape}")
    return float(np.max(np.abs(ours.astype(np.float64) - theirs)))


LABELS = {
    ("toy", "mechjax"): "mechjax `mj.forward` (jit)",
    ("toy", "transformer_lens"): "TransformerLens `HookedTransformer` (no_grad)",
    ("gemma", "mechjax"): "mechjax `mj.forward` (jit)",
    ("gemma", "hf"): "HF `Gemma2ForCausalLM` (eager, no_grad)",
    ("capture", "mechjax"): 'mechjax `run_with_stream(capture="all")` (jit)',
    ("capture", "transformer_lens"): "TransformerLens `run_with_cache` (no_grad)",
}
ROW_NAMES = {
    "toy": "(a) attn-only toy",
    "gemma": "(b) Gemma 2, 2 layers, d_model {d_model}, vocabulary {d_vocab:,}",
    "capture": "(c) capture every activation",
}


def _table(results: dict, sizes: dict, row_names: dict) -> str:
    headers = [
        "row",
        "implementation",
        "batch × pos",
        "tokens/s",
        "ms / call (median)",
        "compile s",
        "peak RSS Δ MiB",
        "speed-up vs peer",
        "target",
    ]
    rows = []
    for case in ROWS:
        peer = PEERS[case]
        if (case, "mechjax") not in results:
            continue
        ours, theirs = results[(case, "mechjax")], results[(case, peer)]
        shape = sizes["gemma"] if case == "gemma" else sizes["toy"]
        batch_pos = f"{shape['batch']} × {shape.get('n_pos', shape.get('n_ctx'))}"
        speedup, met = fmt_ratio(ours["tokens_per_s"], theirs["tokens_per_s"], SPEED_TARGET)
        for impl, r in (("mechjax", ours), (peer, theirs)):
            rows.append(
                [
                    row_names[case],
                    LABELS[(case, impl)],
                    batch_pos,
                    fmt_rate(r["tokens_per_s"]),
                    fmt_ms(r["median_s"]),
                    fmt_s(r["compile_s"]) if impl == "mechjax" else "—",
                    f"{r['peak_mib']:,.0f}",
                    speedup if impl == "mechjax" else "1.00x",
                    met if impl == "mechjax" else "",
                ]
            )
    return markdown_table(headers, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, < 1 min)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per row (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (incl. first)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(WORKERS, args.worker)
        return

    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    warmup = args.warmup or sizes["warmup"]
    toy = sizes["toy"]

    print(f"# Forward-pass benchmark ({mode} sizes)\n")
    for line in machine_header(["jax", "jaxlib", "torch", "transformers", "transformer-lens"]):
        print(line)
    print(
        f"- toy: 2-layer attention-only, d_model {toy['d_model']}, {toy['n_heads']} heads, "
        f"vocabulary {toy['d_vocab']}, context {toy['n_ctx']}, batch {toy['batch']}, "
        "LayerNorm, learned positions, biases; float32"
    )
    print(
        f"- timing: median of {args.repeats or sizes['repeats']} calls "
        f"({args.repeats or sizes['gemma_repeats']} for Gemma) after {warmup} warm-up calls; "
        "compile s = first call - median"
    )
    print(f"{MEMORY_NOTE} (weights included)\n")

    gemma_cfg = gemma2_two_layer(
        **{k: v for k, v in sizes["gemma"].items() if k not in ("batch", "n_pos")}
    )
    row_names = dict(ROW_NAMES, gemma=ROW_NAMES["gemma"].format(**gemma_cfg.to_dict()))
    results: dict = {}
    notes: list[str] = []
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="mechjax-bench-") as tmpdir:
        for case in ROWS:
            if case not in rows:
                continue
            spec = dict(case=case, tmpdir=tmpdir, warmup=warmup)
            if case == "gemma":
                cfg = gemma_cfg
                folder = os.path.join(tmpdir, "gemma2")
                seconds = write_gemma_folder(cfg, folder)
                print(f"(wrote the random HF Gemma 2 folder in {seconds:.1f} s)", flush=True)
                spec.update(
                    folder=folder,
                    cfg=cfg.to_dict(),
                    d_vocab=cfg.d_vocab,
                    sizes=sizes["gemma"],
                    repeats=args.repeats or sizes["gemma_repeats"],
                )
            else:
                spec.update(sizes=toy, repeats=args.repeats or sizes["repeats"])
            for impl in ("mechjax", PEERS[case]):
                print(f"running {case}/{impl} ...", end=" ", flush=True)
                results[(case, impl)] = run_worker(script, dict(spec, impl=impl))
                print(f"{results[(case, impl)]['process_wall_s']:.1f} s (whole process)")
            peer = PEERS[case]
            diff = _max_diff(tmpdir, case, peer, "logits")
            notes.append(f"{row_names[case]}: max |logits mechjax - {peer}| = {diff:.2e}")
            if case == "capture":
                pdiff = _max_diff(tmpdir, case, peer, "pattern")
                ours, theirs = results[(case, "mechjax")], results[(case, peer)]
                notes.append(
                    f"{row_names[case]}: max |pattern (last layer) mechjax - {peer}| = "
                    f"{pdiff:.2e}; captured: mechjax {ours['captured']} arrays "
                    f"({ours['captured_mib']:,.0f} MiB), {peer} {theirs['captured']} tensors "
                    f"({theirs['captured_mib']:,.0f} MiB)"
                )
            if case == "gemma":
                ours, theirs = results[(case, "mechjax")], results[(case, "hf")]
                notes.append(
                    f"{row_names[case]}: weights {ours['weights_mib']:,.0f} MiB; loading took "
                    f"mechjax {ours['load_s']:.1f} s (peak RSS Δ {ours['load_peak_mib']:,.0f} "
                    f"MiB), HF {theirs['load_s']:.1f} s (peak RSS Δ "
                    f"{theirs['load_peak_mib']:,.0f} MiB; HF memory-maps the file, so its "
                    "reads happen in the first forward)"
                )
        print()
        print(_table(results, sizes, row_names))

    print()
    for note in notes:
        print(f"- {note}")
    if ("toy", "mechjax") in results and ("capture", "mechjax") in results:
        plain = results[("toy", "mechjax")]["median_s"]
        captured = results[("capture", "mechjax")]["median_s"]
        overhead = captured / plain - 1
        met = "met" if overhead < CAPTURE_OVERHEAD_TARGET else "NOT met"
        print(
            f"- mechjax capture overhead: capture='all' {captured * 1e3:.1f} ms vs plain forward "
            f"{plain * 1e3:.1f} ms = {overhead:+.0%} "
            f"(target < {CAPTURE_OVERHEAD_TARGET:.0%}: {met})"
        )
        floor = results[("capture", "mechjax")]["write_floor_s"]
        print(
            f"- floor: a jitted call that only fills fresh arrays of the captured shapes takes "
            f"{floor * 1e3:.1f} ms = {floor / plain:.0%} of the plain forward (first-touch page "
            "faults and memory bandwidth; any capture returning these arrays costs at least this)"
        )
    threads = {
        (r["torch_threads"], r["torch_interop"]) for r in results.values() if "torch_threads" in r
    }
    for intra, inter in sorted(threads):
        print(f"- torch threads in the peer workers: intra-op {intra}, inter-op {inter}")
    print(f"- load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
