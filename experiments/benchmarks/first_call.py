"""First-call latency: a notebook session, mechjax against TransformerLens, in fresh processes.

    python experiments/benchmarks/first_call.py              3 repeats, medians
    python experiments/benchmarks/first_call.py --quick      1 repeat: a smoke run

What a user feels when they open a notebook and run the first cells: every step below
runs ONCE, in a fresh process, from the start of the worker function to the end of the
session, with no warm-up. Both tools take the same steps on the shipped checkpoint
`checkpoints/attn2` (2-layer attention-only, d_model 64, 8 heads of 8, byte vocabulary
258, n_ctx 64, LayerNorm, learned positions):

1. import: mechjax `import jax, mechjax` (+ the compilation-cache call of the row, right
   after the imports); TransformerLens `import torch, transformer_lens` (+ its
   `head_detector` and `patching` modules). Timed from the top of the worker function,
   before the heavy import (this script and `common.py` import only numpy at module
   level), and including the start of the runtime (`common.init_jax_runtime`: JAX's CPU
   client; `common.init_torch_runtime`: torch's thread pool), which any first cell pays.
2. load: mechjax `mechjax.io.load_model("checkpoints/attn2")`. TransformerLens has no
   reader for a mechjax checkpoint, so a preparation worker converts it once
   (`mechjax.io.to_hooked_transformer`) and `torch.save`s the `state_dict()` and
   `cfg.to_dict()`; the timed step is `torch.load` + `HookedTransformer(cfg)` +
   `load_state_dict` (TransformerLens's worker never imports jax or mechjax).
3. forward + capture: mechjax `run_with_stream(params, tokens, cfg,
   capture=("pattern",))`; TransformerLens `run_with_cache(tokens, names_filter=<ends
   with "pattern">)`; on the clean prompts of step 5 (8 x 48 tokens).
4. heads: mechjax `heads.detect_heads(params, cfg, tokens, seg_len=16, n_repeats=2,
   bos_id=256)`: one jitted pass giving induction, prefix-matching, previous-token,
   duplicate-token and copying scores, each a mean over the queries that qualify (e.g.
   induction: attention from each query of the second copy to the token after its
   token's first occurrence). TransformerLens: `head_detector.detect_head` for
   "previous_token_head", "duplicate_token_head" and "induction_head" (its "mul" score:
   per sequence, sum(pattern * detection pattern) / sum(pattern) over every query row,
   then the mean over sequences; one `run_with_cache` per sequence and head type). Both
   on the same 8 sequences of a BOS (256) and two copies of 16 random bytes. The scores
   are not compared (the definitions differ); their top heads are printed.
5. resid sweep: denoising activation patching of resid_pre at every (layer, position),
   metric the logit difference correct - wrong at the last position, mean over the
   batch; 8 prompts x 48 random bytes (clean and corrupted) and answer ids [8], numpy
   draws from seed 0. mechjax `causal.activation_patching(params, cfg, clean, corrupted,
   "resid_pre", ("layer", "pos"), answers=(correct, wrong))`; TransformerLens
   `run_with_cache(clean)` + `patching.get_act_patch_resid_pre(model, corrupted,
   clean_cache, metric)`.
6. z sweep: the same at `z`, every (layer, head), all positions; TransformerLens
   `patching.get_act_patch_attn_head_out_all_pos`.
7. resid sweep, new length: step 5 again on new prompts of 40 tokens (batch 8) in the
   same process: what changing the prompt length costs.

Each result is turned into numpy inside its step (what a user looks at). TransformerLens
runs with gradients off (`torch.set_grad_enabled(False)`, set in its import step).

Rows, each worker its own fresh process (protocol in `common.py`):

* mechjax cold: the on-disk compilation cache on an empty temporary folder
  (`mechjax.enable_compilation_cache(path)` where that exists, else JAX's own settings);
* mechjax warm: the same folder again, in a new process, after the cold one filled it;
* mechjax nocache: the cache off (`MECHJAX_COMPILATION_CACHE=0`);
* TransformerLens.

`--repeats N` (default 3) runs the four workers N times, in that order, each time in
fresh processes and with a fresh empty cache folder for the cold one; the table gives
per-step medians and the median total. Also printed: the agreement of the two tools
(logits of step 3, grids of 5-7; float32 noise ~1e-5), where mechjax's time goes (JAX's
own compile events, `jax.monitoring`: programs compiled or read from the on-disk cache,
seconds of XLA compilation, lowering and tracing, and per step), and
the targets: cold total <= TransformerLens total; warm total <= 0.5 x TransformerLens
total; mechjax's new-length sweep (step 7) <= 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    MEMORY_NOTE,
    PeakMemory,
    fmt_s,
    init_jax_runtime,
    init_torch_runtime,
    machine_header,
    markdown_table,
    run_worker,
    worker_main,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(REPO, "checkpoints", "attn2")
BOS = 256  # the byte tokenizer's BOS (bytes 0..255, then BOS 256 and PAD 257)
N_BYTES = 256
SESSION = {
    "seed": 0,
    "batch": 8,
    "n_pos": 48,
    "n_pos_new": 40,
    "head_batch": 8,
    "seg_len": 16,
    "n_repeats": 2,
}
STEPS = {  # step -> column header
    "import": "import s",
    "load": "load s",
    "forward": "forward + capture s",
    "heads": "heads s",
    "resid": "resid sweep s",
    "z": "z sweep s",
    "resid_new": "resid sweep, 40 tokens s",
}
VARIANTS = ("cold", "warm", "nocache")
CACHE_ENV = ("MECHJAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")
TARGET_COLD = 1.0  # cold total <= 1.0 x TransformerLens total
TARGET_WARM = 0.5  # warm total <= 0.5 x TransformerLens total
TARGET_NEW_LENGTH_S = 0.3  # mechjax step 7


def inputs(spec: dict) -> dict[str, np.ndarray]:
    """The session's tokens, the same in every worker: sweep prompts (clean, corrupted
    [batch, pos], answers [batch]) at two lengths and the repeated head-detector batch."""
    rng = np.random.default_rng(spec["seed"])
    b = spec["batch"]
    out = {}
    for suffix, n_pos in (("", spec["n_pos"]), ("_new", spec["n_pos_new"])):
        out["clean" + suffix], out["corrupted" + suffix] = rng.integers(
            0, N_BYTES, size=(2, b, n_pos)
        )
        out["correct" + suffix], out["wrong" + suffix] = rng.integers(0, N_BYTES, size=(2, b))
    segment = rng.integers(0, N_BYTES, size=(spec["head_batch"], spec["seg_len"]))
    out["head_tokens"] = np.concatenate(
        [np.full((spec["head_batch"], 1), BOS), np.tile(segment, (1, spec["n_repeats"]))], axis=1
    )
    return out


class Clock:
    """Consecutive step times from `t0`; `skip()` leaves out what ran since the last mark
    (the memory baseline), so the total is the sum of the steps. With a `probe` (a
    cumulative count of seconds), each step also records the probe's increase."""

    def __init__(self, t0: float, probe=None):
        self.last = t0
        self.steps: dict[str, float] = {}
        self.untimed_s = 0.0
        self.probe = probe
        self.probe_last = 0.0  # the probe counts from its own start
        self.probed: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = now - self.last
        self.last = now
        if self.probe:
            value = self.probe()
            self.probed[step] = value - self.probe_last
            self.probe_last = value

    def skip(self) -> None:
        now = time.perf_counter()
        self.untimed_s += now - self.last
        self.last = now


# -- workers ------------------------------------------------------------------------------------


def _compile_listener() -> dict:
    """Totals of JAX's compile events in this process: {event: [count, seconds]}."""
    from jax import monitoring

    names = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",  # or read from the cache
        "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
    }
    # "cache_misses" is recorded when an entry is WRITTEN (a compile long enough to keep)
    counts = {"compile_requests_use_cache": 0, "cache_hits": 0, "cache_misses": 0}
    totals = {name: [0, 0.0] for name in names.values()}

    def on_duration(event, duration, **_):
        if event in names:
            totals[names[event]][0] += 1
            totals[names[event]][1] += float(duration)

    def on_event(event, **_):
        key = event.rsplit("/", 1)[-1]
        if key in counts:
            counts[key] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    return {"durations": totals, "counts": counts}


def mechjax_worker(spec: dict) -> dict:
    t0 = time.perf_counter()
    for name in CACHE_ENV:  # the cache is this row's choice alone, not the caller's
        os.environ.pop(name, None)
    if spec["variant"] == "nocache":
        os.environ["MECHJAX_COMPILATION_CACHE"] = "0"
    import jax

    import mechjax as mj

    cache_how = cache_dir = None
    if spec["cache_dir"]:
        enable = getattr(mj, "enable_compilation_cache", None)
        if enable is not None:
            cache_dir = enable(spec["cache_dir"])
            cache_how = "mechjax.enable_compilation_cache"
        else:
            jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            cache_dir = spec["cache_dir"]
            cache_how = "jax.config fallback (min compile time 0 s)"
    events = _compile_listener()
    init_jax_runtime()

    def compile_work() -> float:  # XLA compilation (or cache reads) and lowering, so far
        return sum(events["durations"][k][1] for k in ("compile", "lower"))

    clock = Clock(t0, compile_work)
    clock.lap("import")
    memory = PeakMemory()
    clock.skip()

    data = inputs(spec)
    params, cfg = mj.io.load_model(spec["checkpoint"])
    jax.block_until_ready(params)
    clock.lap("load")

    logits, stream = mj.run_with_stream(params, data["clean"], cfg, capture=("pattern",))
    logits, pattern = np.asarray(logits), np.asarray(stream["pattern"])
    clock.lap("forward")

    scores = mj.heads.detect_heads(
        params,
        cfg,
        data["head_tokens"],
        seg_len=spec["seg_len"],
        n_repeats=spec["n_repeats"],
        bos_id=BOS,
    )
    clock.lap("heads")

    grids = {}
    for step, site, over, suffix in (
        ("resid", "resid_pre", ("layer", "pos"), ""),
        ("z", "z", ("layer", "head"), ""),
        ("resid_new", "resid_pre", ("layer", "pos"), "_new"),
    ):
        result = mj.causal.activation_patching(
            params,
            cfg,
            data["clean" + suffix],
            data["corrupted" + suffix],
            site,
            over,
            answers=(data["correct" + suffix], data["wrong" + suffix]),
        )
        grids[step] = np.asarray(result.raw)
        clock.lap(step)

    peak = memory.delta_mib()
    np.savez(
        spec["out"],
        logits=logits,
        pattern_shape=np.asarray(pattern.shape),
        **{f"grid_{k}": v for k, v in grids.items()},
        **{f"score_{k}": np.asarray(v) for k, v in scores.items()},
    )
    return {
        "steps": clock.steps,
        "compile_steps": clock.probed,
        "total_s": sum(clock.steps.values()),
        "untimed_s": clock.untimed_s,
        "peak_mib": peak,
        "cache_how": cache_how,
        "cache_dir": cache_dir,
        "jax_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "events": events,
    }


def transformer_lens_worker(spec: dict) -> dict:
    t0 = time.perf_counter()
    os.environ["TQDM_DISABLE"] = "1"  # TransformerLens draws a progress bar per sweep
    import torch
    import transformer_lens
    from transformer_lens import head_detector, patching

    torch.set_grad_enabled(False)
    threads = init_torch_runtime()
    clock = Clock(t0)
    clock.lap("import")
    memory = PeakMemory()
    clock.skip()

    data = inputs(spec)
    saved = torch.load(spec["tl_file"], weights_only=True)
    tl_cfg = transformer_lens.HookedTransformerConfig.from_dict(saved["cfg"])
    model = transformer_lens.HookedTransformer(tl_cfg)
    model.load_state_dict(saved["state_dict"])  # strict: the buffers were saved too
    model.eval()
    clock.lap("load")

    clean = torch.as_tensor(data["clean"])
    logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("pattern"))
    logits = logits.numpy()
    clock.lap("forward")

    rows = torch.as_tensor(data["head_tokens"])

    def to_tokens(seq, *_, **__):  # no tokenizer: "i" names token row i
        return rows[[int(i) for i in seq]] if isinstance(seq, list) else rows[int(seq)][None]

    model.to_tokens = to_tokens
    names = [str(i) for i in range(len(rows))]
    kinds = ("previous_token_head", "duplicate_token_head", "induction_head")
    scores = {k: head_detector.detect_head(model, names, k).numpy() for k in kinds}
    clock.lap("heads")

    grids = {}
    for step, fn, suffix in (
        ("resid", patching.get_act_patch_resid_pre, ""),
        ("z", patching.get_act_patch_attn_head_out_all_pos, ""),
        ("resid_new", patching.get_act_patch_resid_pre, "_new"),
    ):
        correct = torch.as_tensor(data["correct" + suffix])[:, None]
        wrong = torch.as_tensor(data["wrong" + suffix])[:, None]

        def metric(logits, correct=correct, wrong=wrong):
            last = logits[:, -1]
            return (last.gather(-1, correct) - last.gather(-1, wrong)).mean()

        _, clean_cache = model.run_with_cache(torch.as_tensor(data["clean" + suffix]))
        grid = fn(model, torch.as_tensor(data["corrupted" + suffix]), clean_cache, metric)
        grids[step] = grid.numpy()
        clock.lap(step)

    peak = memory.delta_mib()
    np.savez(
        spec["out"],
        logits=logits,
        **{f"grid_{k}": v for k, v in grids.items()},
        **{f"score_{k}": v for k, v in scores.items()},
    )
    return {
        "steps": clock.steps,
        "total_s": sum(clock.steps.values()),
        "untimed_s": clock.untimed_s,
        "peak_mib": peak,
        **threads,
    }


def prepare_worker(spec: dict) -> dict:
    """Convert the checkpoint for TransformerLens once: its state dict and config."""
    import torch

    import mechjax as mj

    params, cfg = mj.io.load_model(spec["checkpoint"])
    model = mj.io.to_hooked_transformer(params, cfg)
    tl_cfg = {  # numpy scalars (initializer_range) would need weights_only=False
        k: (v.item() if isinstance(v, np.generic) else v) for k, v in model.cfg.to_dict().items()
    }
    torch.save({"cfg": tl_cfg, "state_dict": model.state_dict()}, spec["tl_file"])
    return {"model": cfg.name, "tl_params": sum(p.numel() for p in model.parameters())}


CASES = {
    "session/mechjax": mechjax_worker,
    "session/transformer_lens": transformer_lens_worker,
    "prepare/transformer_lens": prepare_worker,
}


# -- the parent ----------------------------------------------------------------------------------


def _folder(path: str) -> tuple[int, float]:
    """(files, MiB) under `path`."""
    n, size = 0, 0
    for root, _, files in os.walk(path):
        for f in files:
            n += 1
            size += os.path.getsize(os.path.join(root, f))
    return n, size / 2**20


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _max_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    return f"{float(np.abs(a - b).max()):.2e}"


def _top(score: np.ndarray) -> str:
    layer, head = np.unravel_index(np.nanargmax(score), score.shape)
    return f"{float(score[layer, head]):.2f} at L{layer}H{head}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, help="fresh runs of every worker (default 3)")
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(CASES, args.worker)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")

    print(
        "# First-call latency: mechjax vs TransformerLens, fresh processes"
        + (" (--quick)" if args.quick else "")
    )
    print()
    print("\n".join(machine_header(["jax", "jaxlib", "torch", "transformer-lens", "numpy"])))
    print(
        f"- session on {os.path.relpath(CHECKPOINT, REPO)}: forward + pattern capture, head "
        f"detection on {SESSION['head_batch']} x (BOS + {SESSION['n_repeats']} x "
        f"{SESSION['seg_len']}) tokens, resid (layer x pos) and z (layer x head) denoising "
        f"sweeps on {SESSION['batch']} x {SESSION['n_pos']} tokens, then a resid sweep on "
        f"{SESSION['batch']} x {SESSION['n_pos_new']}; each step once, no warm-up; medians of "
        f"{repeats} repeat(s), each worker a fresh process"
    )
    print()

    tmp = tempfile.mkdtemp(prefix="mechjax_first_call_")
    results: dict[str, list[dict]] = {v: [] for v in (*VARIANTS, "transformer_lens")}
    cache_sizes = []
    try:
        base = {**SESSION, "checkpoint": CHECKPOINT, "tl_file": os.path.join(tmp, "tl_model.pt")}
        print("preparing the TransformerLens model file ...", file=sys.stderr, flush=True)
        run_worker(__file__, {**base, "case": "prepare", "impl": "transformer_lens"})
        for r in range(repeats):
            cache_dir = os.path.join(tmp, f"xla-cache-{r}")
            os.makedirs(cache_dir)
            sizes = {}
            for variant in (*VARIANTS, "transformer_lens"):
                impl = "transformer_lens" if variant == "transformer_lens" else "mechjax"
                spec = {
                    **base,
                    "case": "session",
                    "impl": impl,
                    "variant": variant,
                    "cache_dir": cache_dir if variant in ("cold", "warm") else None,
                    "out": os.path.join(tmp, f"{variant}.npz"),
                }
                print(f"repeat {r + 1}/{repeats}: {variant} ...", file=sys.stderr, flush=True)
                results[variant].append(run_worker(__file__, spec, timeout=1800))
                if variant in ("cold", "warm"):
                    sizes[variant] = _folder(cache_dir)
            cache_sizes.append(sizes)
        arrays = {v: dict(np.load(os.path.join(tmp, f"{v}.npz"))) for v in results}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- agreement (the last repeat's arrays)
    ours, theirs = arrays["nocache"], arrays["transformer_lens"]
    print("Agreement (last repeat; mechjax nocache vs TransformerLens, same weights and tokens):")
    print(
        f"- logits of step 3 {list(ours['logits'].shape)}: max |mechjax - TL| = "
        f"{_max_diff(ours['logits'], theirs['logits'])} (values span "
        f"{theirs['logits'].min():.2f} .. {theirs['logits'].max():.2f})"
    )
    for step, what in (("resid", "resid sweep"), ("z", "z sweep"), ("resid_new", "40-token")):
        a, b = ours[f"grid_{step}"], theirs[f"grid_{step}"]
        print(
            f"- {what} grid {list(a.shape)}: max |mechjax - TL| = {_max_diff(a, b)} "
            f"(metric values span {b.min():.3f} .. {b.max():.3f})"
        )
    same = []
    for variant in ("cold", "warm"):
        keys = [k for k in ours if k.startswith(("logits", "grid_", "score_"))]
        diff = max(float(np.nanmax(np.abs(arrays[variant][k] - ours[k]))) for k in keys)
        same.append(f"{variant} {diff:.1e}")
    print(
        "- mechjax rows among themselves (logits, grids, head scores; max |row - nocache|): "
        + ", ".join(same)
    )
    print(
        "- head scores (definitions differ, not compared; top head of each): "
        + "; ".join(
            f"{name} mechjax {_top(ours[f'score_{name}'])} / TL {_top(theirs[f'score_{tl}'])}"
            for name, tl in (
                ("previous_token", "previous_token_head"),
                ("duplicate_token", "duplicate_token_head"),
                ("induction", "induction_head"),
            )
        )
    )
    print()

    # -- the table
    tl_total = _median([r["total_s"] for r in results["transformer_lens"]])
    labels = {
        "cold": "mechjax cold (empty cache)",
        "warm": "mechjax warm (cache filled)",
        "nocache": "mechjax nocache",
        "transformer_lens": "TransformerLens",
    }
    rows, medians = [], {}
    for variant, runs in results.items():
        steps = {s: _median([r["steps"][s] for r in runs]) for s in STEPS}
        total = _median([r["total_s"] for r in runs])
        medians[variant] = {**steps, "total": total}
        rows.append(
            [
                labels[variant],
                *(fmt_s(steps[s], 3) for s in STEPS),
                fmt_s(total, 2),
                f"{total / tl_total:.2f}x" if tl_total else "n/a",
                fmt_s(_median([r["process_wall_s"] for r in runs]), 2),
                f"{_median([r['peak_mib'] for r in runs]):.0f}",
            ]
        )
    headers = ["row", *STEPS.values(), "total s", "total / TL", "process s", "peak RSS Δ MiB"]
    print(markdown_table(headers, rows))
    print()

    # -- where mechjax's time goes
    rows, step_rows = [], []
    for variant in VARIANTS:
        runs = results[variant]

        def med(key, index, runs=runs):
            return _median([r["events"]["durations"][key][index] for r in runs])

        def count(key, runs=runs):
            return f"{_median([r['events']['counts'][key] for r in runs]):.0f}"

        rows.append(
            [
                labels[variant],
                f"{med('compile', 0):.0f}",
                fmt_s(med("compile", 1), 2),
                " / ".join(
                    count(k) for k in ("compile_requests_use_cache", "cache_hits", "cache_misses")
                ),
                fmt_s(med("cache_read", 1), 2),
                fmt_s(med("lower", 1), 2),
                f"{med('trace', 0):.0f} / {fmt_s(med('trace', 1), 2)}",
            ]
        )
        step_rows.append(
            [labels[variant]]
            + [
                f"{fmt_s(_median([r['compile_steps'][s] for r in runs]), 3)} of "
                f"{fmt_s(medians[variant][s], 3)}"
                for s in STEPS
            ]
        )
    print("Where mechjax's time goes (JAX's compile events over the session; medians):")
    print()
    print(
        markdown_table(
            [
                "row",
                "XLA programs",
                "XLA compile (or cache read) s",
                "cache lookups / hits / written",
                "of which cache reads s",
                "lowering s",
                "traces / s (nested counted twice)",
            ],
            rows,
        )
    )
    print()
    print("XLA compile (or cache read) + lowering s, of each step's s:")
    print()
    print(markdown_table(["row", *(h[:-2] for h in STEPS.values())], step_rows))
    print()
    cold0 = results["cold"][0]
    print(
        f"- cache: {cold0['cache_how']}, folder in use {cold0['cache_dir']}; after the cold "
        "worker / after the warm one (files, MiB): "
        + "; ".join(
            f"{s['cold'][0]} / {s['warm'][0]} files, {s['cold'][1]:.1f} / {s['warm'][1]:.1f} MiB"
            for s in cache_sizes
        )
    )
    print(
        "- nocache worker's JAX cache folder: "
        + str(results["nocache"][0]["jax_cache_dir"] or "none (off)")
    )
    print(
        f"- TransformerLens: torch threads {results['transformer_lens'][0]['torch_threads']}, "
        "gradients off"
    )
    print(
        "- steps: each run once in a fresh process, timed from the top of the worker function "
        "(before importing jax / torch; import includes the runtime start-up); total = the "
        "sum of the steps (median of totals); process s = the whole worker process as the "
        "parent sees it (interpreter start-up and result line included)"
    )
    print(MEMORY_NOTE)
    print()

    # -- targets
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    cold, warm = medians["cold"]["total"], medians["warm"]["total"]
    print("Targets:")
    print(
        f"- mechjax cold total {cold:.2f} s <= TransformerLens total {tl_total:.2f} s: "
        + verdict(cold <= TARGET_COLD * tl_total)
    )
    print(
        f"- mechjax warm total {warm:.2f} s <= {TARGET_WARM} x TransformerLens total "
        f"({TARGET_WARM * tl_total:.2f} s): " + verdict(warm <= TARGET_WARM * tl_total)
    )
    for variant in VARIANTS:
        new = medians[variant]["resid_new"]
        print(
            f"- mechjax {variant}: resid sweep on the new length (step 7) {new:.3f} s <= "
            f"{TARGET_NEW_LENGTH_S} s: " + verdict(new <= TARGET_NEW_LENGTH_S)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
