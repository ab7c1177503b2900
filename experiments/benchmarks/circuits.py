"""Circuit-analysis speed: mechjax against TransformerLens, on the same weights.

    python experiments/benchmarks/circuits.py            real sizes (run on an idle machine)
    python experiments/benchmarks/circuits.py --quick    tiny sizes, a smoke run

Rows (each implementation of each row runs in its own fresh worker process; protocol and
helpers in common.py):

(a) toy: a 2-layer attention-only model, d_model 256, 8 heads (d_head 32), vocabulary
    256, LayerNorm, learned positions, biases. TransformerLens side: the
    `HookedTransformer` built from the same params by `mechjax.io.to_hooked_transformer`.
(b) gemma: Gemma-2-2B attention widths (d_model 2304, 8 heads, 4 key/value heads,
    d_head 256) with the real vocabulary (256,000, tied embeddings scaled by
    sqrt(d_model)), two layers; only the weights the circuits read are drawn. A
    TransformerLens Gemma 2 needs an HF model, so its side applies TransformerLens's own
    `FactoredMatrix` and `utils.composition_scores` (what `all_composition_scores`
    calls) to the same tensors, key/value weights repeated over each group.
(c) heads: the head-detector pass of the toy on 32 sequences of a BOS and two copies of
    25 random tokens: `mechjax.activations.heads.detect_heads` (one jitted forward, all five scores)
    vs TransformerLens `head_detector.detect_head` for its three head types (previous,
    duplicate, induction). `detect_head` tokenizes strings; the config-built model has
    no tokenizer, so its `to_tokens` is replaced by a lookup of the same token rows and
    `detect_head` itself runs unchanged (one `run_with_cache` per sequence and type).

Operations of (a) and (b), each timed separately:
  ov_eig    eigenvalues of every head's OV circuit W_V W_O (TL: `model.OV.eigenvalues`)
  full_eig  eigenvalues of every head's full OV circuit W_E W_OV W_U. TL:
            `(W_E @ OV @ W_U).eigenvalues`, which at the real vocabulary forms
            [layer, head, 256000, 256] factors on both sides (~8 GiB, ~5 T multiply-adds)
            and takes eig of B A. mechjax: `circuit_eigen.full_ov_eigenvalues`, the same
            eig(B A) with B A = W_O (W_U W_E) W_V: the [d_model, d_model] Gram matrix
            W_U W_E once for all heads (symmetric with tied embeddings: about half of
            vocab * d_model^2), no vocab-sized factor
  k_comp    K-composition scores of all head pairs (TL: `all_composition_scores("K")`)
mechjax calls are wrapped in `jax.jit` (the config static), as a user would.
Parity is printed beside the table: sorted eigenvalue moduli, copying scores
(sum(lambda) / sum(|lambda|)) and composition scores, max abs difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    MEMORY_NOTE,
    PeakMemory,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    gemma2_two_layer,
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
        "toy": dict(d_model=256, n_heads=8, n_ctx=128, d_vocab=256),
        "gemma": dict(),  # the preset's widths
        "heads": dict(batch=32, seg_len=25),
        "warmup": 2,
        "repeats": 5,
        "gemma_repeats": 3,
    },
    "quick": {
        "toy": dict(d_model=32, n_heads=4, n_ctx=64, d_vocab=64),
        "gemma": dict(d_model=64, n_heads=4, n_kv_heads=2, d_head=16, d_vocab=2000),
        "heads": dict(batch=4, seg_len=10),
        "warmup": 1,
        "repeats": 2,
        "gemma_repeats": 2,
    },
}
ROWS = ("toy", "gemma", "heads")
OPS = ("ov_eig", "full_eig", "k_comp")
OP_NAMES = {
    "ov_eig": "OV eigenvalues, all heads",
    "full_eig": "full OV circuit eigenvalues, all heads",
    "k_comp": "K-composition, all pairs",
    "detect": "head detectors",
}
SPEED_TARGET = 5.0


def gemma_weights(cfg, seed: int = 0) -> dict:
    """What the circuits read: W_E [vocab, d_model] (tied: W_U = W_E^T) and the attention
    matrices, N(0, 1/fan_in) (the embedding N(0, 1/d_model), as Gemma scales it up)."""
    rng = np.random.default_rng(seed)
    L, H, K, D, E = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head

    def normal(shape, fan_in):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(fan_in**-0.5)

    return {
        "W_E": normal((cfg.d_vocab, D), D),
        "blocks": {
            "W_Q": normal((L, H, D, E), D),
            "W_K": normal((L, K, D, E), D),
            "W_V": normal((L, K, D, E), D),
            "W_O": normal((L, H, E, D), E),
        },
    }


def _weights(spec: dict):
    """(cfg, params) of a row, identical in every worker."""
    import mechjax as mj

    if spec["case"] == "gemma":
        cfg = mj.ModelConfig.from_dict(spec["cfg"])
        return cfg, gemma_weights(cfg)
    t = spec["sizes"]
    cfg = toy_config(t["d_model"], t["n_heads"], t["n_ctx"], t["d_vocab"])
    return cfg, numpy_params(cfg)


def _save(spec: dict, what: str, array) -> None:
    np.save(os.path.join(spec["tmpdir"], f"{spec['case']}_{spec['impl']}_{what}.npy"), array)


def _timed(spec, call, outputs: dict, name: str) -> dict:
    timing = time_calls(call, warmup=spec["warmup"], repeats=spec["repeats"])
    outputs[name] = call()
    return {"median_s": timing.median_s, "first_s": timing.first_s, "compile_s": timing.compile_s}


def _save_eigen(spec, outputs: dict) -> None:
    for name in ("ov_eig", "full_eig"):
        if name in outputs:
            _save(spec, name, np.asarray(outputs[name]).astype(np.complex128))


# -- workers ----------------------------------------------------------------------------------------


def _circuits_mechjax(spec: dict) -> dict:
    import jax

    from mechjax.circuits import eigen as circuit_eigen
    from mechjax.circuits import weights as circuits

    init_jax_runtime()
    mem = PeakMemory()
    cfg, params = _weights(spec)
    # device_put copies each array once; jnp.asarray briefly held two copies of the
    # 2.2 GiB embedding, which the peak-memory column then charged to the circuits
    params = jax.device_put(params)
    calls = {
        "ov_eig": jax.jit(lambda p: circuits.ov_circuit(p, cfg).eigenvalues),
        "full_eig": jax.jit(lambda p: circuit_eigen.full_ov_eigenvalues(p, cfg)),
        "k_comp": lambda p: circuits.composition_scores(p, cfg, "K"),  # jitted inside
    }
    outputs, result = {}, {"case": spec["case"], "impl": spec["impl"], "ops": {}}
    for name in spec["ops"]:
        call = jax_blocking(lambda fn=calls[name]: fn(params))
        result["ops"][name] = _timed(spec, call, outputs, name)
    result["peak_mib"] = mem.delta_mib()
    _save_eigen(spec, outputs)
    if "k_comp" in outputs:
        _save(spec, "k_comp", np.asarray(outputs["k_comp"]))
    return result


def _tl_factored(spec: dict):
    """TransformerLens FactoredMatrix objects of the row's weights: (OV, QK, W_E, W_U)."""
    import torch
    from transformer_lens import FactoredMatrix

    cfg, params = _weights(spec)
    if spec["case"] == "toy":
        from mechjax.io import to_hooked_transformer

        model = to_hooked_transformer(params, cfg)
        return model, model.OV, model.QK, model.W_E, model.W_U
    blocks = {k: torch.from_numpy(v) for k, v in params["blocks"].items()}
    repeat = lambda w: w.repeat_interleave(cfg.group_size, dim=1)  # noqa: E731
    OV = FactoredMatrix(repeat(blocks["W_V"]), blocks["W_O"])
    QK = FactoredMatrix(blocks["W_Q"], repeat(blocks["W_K"]).transpose(-2, -1))
    W_E = torch.from_numpy(params["W_E"])
    return None, OV, QK, W_E * cfg.embed_scale, W_E.T


def _circuits_transformer_lens(spec: dict) -> dict:
    import torch
    from transformer_lens import utils

    threads = init_torch_runtime()
    mem = PeakMemory()
    model, OV, QK, W_E, W_U = _tl_factored(spec)
    L = OV.shape[0]

    def k_composition():
        if model is not None:
            return model.all_composition_scores("K")
        # what all_composition_scores does, on the same FactoredMatrix objects
        scores = utils.composition_scores(OV, QK.T, broadcast_dims=True)
        mask = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
        return torch.where(mask, scores, torch.zeros_like(scores))

    calls = {
        "ov_eig": lambda: (model.OV if model is not None else OV).eigenvalues,
        "full_eig": lambda: (W_E @ OV @ W_U).eigenvalues,
        "k_comp": k_composition,
    }
    outputs, result = {}, {"case": spec["case"], "impl": spec["impl"], "ops": {}, **threads}
    with torch.no_grad():
        for name in spec["ops"]:
            result["ops"][name] = _timed(spec, calls[name], outputs, name)
    result["peak_mib"] = mem.delta_mib()
    _save_eigen(spec, {k: v.numpy() for k, v in outputs.items() if k != "k_comp"})
    if "k_comp" in outputs:
        _save(spec, "k_comp", outputs["k_comp"].numpy())
    return result


def _head_tokens(spec: dict) -> np.ndarray:
    from mechjax.activations import heads

    s, t = spec["heads"], spec["sizes"]
    return heads.repeated_tokens(
        1, s["batch"], s["seg_len"], t["d_vocab"], n_repeats=2, bos_id=t["d_vocab"] - 1
    )


def _heads_mechjax(spec: dict) -> dict:
    import jax.numpy as jnp

    from mechjax.activations import heads

    init_jax_runtime()
    mem = PeakMemory()
    cfg, params = _weights(dict(spec, case="toy"))
    tokens = jnp.asarray(_head_tokens(spec))
    s = spec["heads"]

    def call():
        return heads.detect_heads(
            params, cfg, tokens, seg_len=s["seg_len"], n_repeats=2, bos_id=cfg.d_vocab - 1
        )

    outputs = {}
    timing = _timed(spec, call, outputs, "detect")
    # TransformerLens's "mul" scores, from mechjax's patterns, for the parity check
    from mechjax import run_with_stream

    _, stream = run_with_stream(params, tokens, cfg, capture=["pattern"])
    for name, detection in heads.detection_patterns(tokens).items():
        _save(spec, name, np.asarray(heads.pattern_match_score(stream["pattern"], detection)))
    return {"case": "heads", "impl": spec["impl"], "ops": {"detect": timing},
            "peak_mib": mem.delta_mib()}  # fmt: skip


def _heads_transformer_lens(spec: dict) -> dict:
    import torch
    from transformer_lens import head_detector

    from mechjax.io import to_hooked_transformer

    threads = init_torch_runtime()
    mem = PeakMemory()
    cfg, params = _weights(dict(spec, case="toy"))
    model = to_hooked_transformer(params, cfg)
    rows = torch.from_numpy(_head_tokens(spec).astype(np.int64))

    def to_tokens(seq):  # no tokenizer: "i" names token row i (a list, every named row)
        return rows[[int(i) for i in seq]] if isinstance(seq, list) else rows[int(seq)][None]

    model.to_tokens = to_tokens
    names = [str(i) for i in range(len(rows))]
    kinds = ("previous_token_head", "duplicate_token_head", "induction_head")

    def call():
        return {k: head_detector.detect_head(model, names, k) for k in kinds}

    outputs = {}
    with torch.no_grad():
        timing = _timed(spec, call, outputs, "detect")
    for name, score in outputs["detect"].items():
        _save(spec, name, score.numpy())
    return {"case": "heads", "impl": spec["impl"], "ops": {"detect": timing},
            "peak_mib": mem.delta_mib(), **threads}  # fmt: skip


WORKERS = {
    "toy/mechjax": _circuits_mechjax,
    "toy/transformer_lens": _circuits_transformer_lens,
    "gemma/mechjax": _circuits_mechjax,
    "gemma/transformer_lens": _circuits_transformer_lens,
    "heads/mechjax": _heads_mechjax,
    "heads/transformer_lens": _heads_transformer_lens,
}


# -- the parent -------------------------------------------------------------------------------------


def _load(tmpdir, case, impl, what):
    return np.load(os.path.join(tmpdir, f"{case}_{impl}_{what}.npy"))


def _copying(eig: np.ndarray) -> np.ndarray:
    total = np.abs(eig).sum(-1)
    return np.where(total > 0, eig.real.sum(-1) / np.where(total > 0, total, 1), 0)


def _parity(tmpdir: str, case: str, ops) -> list[str]:
    notes = []
    for op in ops:
        ours = _load(tmpdir, case, "mechjax", op)
        theirs = _load(tmpdir, case, "transformer_lens", op)
        if op == "k_comp":
            notes.append(f"{case} k_comp: max |mechjax - TL| = {np.abs(ours - theirs).max():.2e}")
            continue
        # eigenvalues as multisets: compare sorted moduli and copying scores per head
        moduli = np.abs(np.sort(np.abs(ours), -1) - np.sort(np.abs(theirs), -1)).max()
        scale = np.abs(theirs).max()
        copy = np.abs(_copying(ours) - _copying(theirs)).max()
        notes.append(
            f"{case} {op}: max |sorted |λ| mechjax - TL| = {moduli:.2e} (largest |λ| "
            f"{scale:.3g}); max |copying score difference| = {copy:.2e}"
        )
    return notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    parser.add_argument("--repeats", type=int, help="timed calls per operation (median)")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (incl. first)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(WORKERS, args.worker)
        return
    rows = [r for r in args.rows.split(",") if r]
    ops = [o for o in args.ops.split(",") if o]
    for given, known, what in ((rows, ROWS, "rows"), (ops, OPS, "ops")):
        if set(given) - set(known):
            parser.error(f"unknown {what} {sorted(set(given) - set(known))}; choose from {known}")
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    warmup = args.warmup or sizes["warmup"]
    gemma_cfg = gemma2_two_layer(**sizes["gemma"])
    toy = sizes["toy"]

    print(f"# Circuit-analysis benchmark ({mode} sizes)\n")
    for line in machine_header(["jax", "jaxlib", "torch", "transformer-lens"]):
        print(line)
    print(
        f"- (a) toy: 2 layers, d_model {toy['d_model']}, {toy['n_heads']} heads, vocabulary "
        f"{toy['d_vocab']}; (b) gemma: 2 layers, d_model {gemma_cfg.d_model}, "
        f"{gemma_cfg.n_heads} heads / {gemma_cfg.n_kv_heads} kv heads of {gemma_cfg.d_head}, "
        f"vocabulary {gemma_cfg.d_vocab:,} (TL side: FactoredMatrix + utils.composition_scores "
        f"on the same tensors); (c) heads: {sizes['heads']['batch']} sequences of BOS + 2 x "
        f"{sizes['heads']['seg_len']} tokens on the toy"
    )
    print(f"- timing: median after {warmup} warm-up call(s); compile s = first - median")
    print(f"{MEMORY_NOTE}\n")

    results, notes = {}, []
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="mechjax-bench-") as tmpdir:
        for case in (r for r in ROWS if r in rows):
            spec = dict(case=case, tmpdir=tmpdir, warmup=warmup, sizes=toy, ops=ops)
            spec["repeats"] = (
                args.repeats or sizes["gemma_repeats" if case == "gemma" else "repeats"]
            )
            if case == "gemma":
                spec["cfg"] = gemma_cfg.to_dict()
            if case == "heads":
                spec["heads"] = sizes["heads"]
            for impl in ("mechjax", "transformer_lens"):
                print(f"running {case}/{impl} ...", end=" ", flush=True)
                results[(case, impl)] = run_worker(script, dict(spec, impl=impl))
                print(f"{results[(case, impl)]['process_wall_s']:.1f} s (whole process)")
            if case == "heads":
                for name in ("previous_token_head", "duplicate_token_head", "induction_head"):
                    diff = np.abs(
                        _load(tmpdir, case, "mechjax", name)
                        - _load(tmpdir, case, "transformer_lens", name)
                    ).max()
                    notes.append(f"heads {name}: max |mechjax - TL detect_head| = {diff:.2e}")
            else:
                notes += _parity(tmpdir, case, ops)

    headers = ["row", "operation", "mechjax ms", "compile s", "TL ms", "speed-up", "target",
               "peak RSS Δ MiB (mechjax / TL)"]  # fmt: skip
    table = []
    for case in (r for r in ROWS if r in rows):
        ours, theirs = results[(case, "mechjax")], results[(case, "transformer_lens")]
        for op, timing in ours["ops"].items():
            peer = theirs["ops"][op]
            speedup, met = fmt_ratio(1 / timing["median_s"], 1 / peer["median_s"], SPEED_TARGET)
            table.append([
                case, OP_NAMES[op], fmt_ms(timing["median_s"]), fmt_s(timing["compile_s"]),
                fmt_ms(peer["median_s"]), speedup, met,
                f"{ours['peak_mib']:,.0f} / {theirs['peak_mib']:,.0f}",
            ])  # fmt: skip
    print()
    print(markdown_table(headers, table))
    print()
    for note in notes:
        print(f"- parity: {note}")
    threads = {
        (r["torch_threads"], r["torch_interop"]) for r in results.values() if "torch_threads" in r
    }
    for intra, inter in sorted(threads):
        print(f"- torch threads in the TL workers: intra-op {intra}, inter-op {inter}")
    print(f"- load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
