"""Shared helpers of the speed and memory benchmarks (not tests; see README.md).

Protocol. A benchmark script runs as a *parent* that prints the machine, the versions and
a markdown table, and starts one fresh *worker* subprocess per (implementation, case):
`python SCRIPT --worker '{"case": ..., ...}'`. The worker imports what it needs,
initialises its runtime (JAX's CPU client, torch's thread pool), reads its resident set
size as a *baseline*, builds the model and runs the case, and prints one line
`BENCH_RESULT {json}`. Its peak memory is the process's RSS high-water mark minus that
baseline: what the weights, activations, compiled code and caches of this one case added
on top of the imported libraries (see `PeakMemory` for why the mark is read from
/proc/self/status rather than `ru_maxrss` alone). Separate processes keep one row's
memory and allocator state out of the next row's numbers.

Timing. `time_calls` times the first call on its own (for JAX: tracing + XLA compile +
one run), runs a few more untimed warm-up calls, then times `repeats` calls and reports
their median. For compiled (mechjax) rows, "compile s" is first call minus the median.
Every timed function must return only after its work is done: JAX results are passed
through `jax.block_until_ready`; torch on CPU is synchronous.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

RESULT_TAG = "BENCH_RESULT "


# -- timing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    first_s: float  # the first call alone (compile + run for jitted code)
    median_s: float  # median of the timed steady-state calls
    times_s: list[float]  # every timed steady-state call

    @property
    def compile_s(self) -> float:
        """First call minus steady state: tracing and compilation (jitted code)."""
        return max(self.first_s - self.median_s, 0.0)

    def to_dict(self) -> dict:
        return {"first_s": self.first_s, "median_s": self.median_s, "times_s": self.times_s}


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
    """Time `fn()` (which must block until its result is ready): the first call, then
    `warmup - 1` untimed calls, then the median of `repeats` timed calls."""
    if warmup < 1 or repeats < 1:
        raise ValueError(f"need warmup >= 1 and repeats >= 1, got {warmup} and {repeats}")
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(first, statistics.median(times), times)


class TimeSpent:
    """Calls and seconds spent in wrapped functions, per key: `spent[key] == [calls, s]`."""

    def __init__(self, *keys: str):
        self.spent = {key: [0, 0.0] for key in keys}

    def wrap(self, fn: Callable, key: str) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[key][0] += 1
                self.spent[key][1] += time.perf_counter() - start

        return wrapper

    def seconds(self, *keys: str) -> float:
        return sum(self.spent[key][1] for key in keys)


def jax_blocking(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` wrapped to wait for every array it returns (JAX dispatches asynchronously)."""
    import jax

    return lambda: jax.block_until_ready(fn())


# -- peak memory ------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (Linux), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_high_water_mib() -> float:
    """This process's peak resident set size so far: `VmHWM` on Linux, else `ru_maxrss`.

    `getrusage(RUSAGE_SELF).ru_maxrss` alone misleads in a worker: Linux carries the
    high-water mark over fork/exec, so a child's ru_maxrss starts at its *parent's* peak
    (a parent that once held a 3 GiB model makes every later worker read >= 3 GiB).
    `VmHWM` is the same high-water mark for this process image only.
    """
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_high_water() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux: clear_refs "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


MEMORY_NOTE = (
    "- peak RSS Δ: one fresh worker process per row; its peak resident set size (VmHWM: "
    "the high-water mark getrusage's ru_maxrss reports, without the parent's peak that "
    "Linux carries over fork/exec) minus its RSS after imports and runtime start-up"
)


class PeakMemory:
    """Peak resident memory added after construction: create it after the imports and the
    runtime start-up, read `delta_mib()` at the end of the case.

    The baseline is the RSS at construction, with the peak mark reset to it (so a
    transient peak while importing does not hide the case's own); where that reset is
    unavailable, the baseline is the high-water mark at construction instead.
    """

    def __init__(self):
        if _reset_high_water() and _proc_status_kib("VmRSS") is not None:
            self.baseline_mib = _proc_status_kib("VmRSS") / 1024
            self.method = "VmHWM - VmRSS after imports (peak mark reset then)"
        else:
            self.baseline_mib = rss_high_water_mib()
            self.method = "ru_maxrss - ru_maxrss after imports"

    def delta_mib(self) -> float:
        return rss_high_water_mib() - self.baseline_mib


def init_jax_runtime() -> None:
    """Start JAX's CPU client (thread pools, allocator) so the baseline includes it."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.zeros(8) + 1)


def init_torch_runtime() -> dict:
    """Start torch's intra-op pool; returns its thread settings for the table header."""
    import torch

    (torch.ones(64, 64) @ torch.ones(64, 64)).sum().item()
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
    }


def tree_mib(tree) -> float:
    """Total size of the arrays/tensors in a pytree or (nested) dict, in MiB."""
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    total = 0
    for leaf in leaves:
        if hasattr(leaf, "nbytes"):
            total += int(leaf.nbytes)
        elif hasattr(leaf, "element_size"):  # torch tensor
            total += leaf.element_size() * leaf.nelement()
    return total / 2**20


# -- worker protocol ------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


def run_worker(
    script: str, spec: dict, *, timeout: float | None = None, env: dict | None = None
) -> dict:
    """Run `python script --worker JSON(spec)` in a fresh process and return its result.

    The worker inherits this process's environment (allocator preloads, thread settings),
    with `env`'s variables set on top (e.g. XLA_FLAGS for a host device count).
    """
    cmd = [sys.executable, os.path.abspath(script), "--worker", json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired as err:
        raise WorkerFailed(f"worker {spec.get('case')}/{spec.get('impl')} timed out") from err
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
        raise WorkerFailed(
            f"worker {spec.get('case')}/{spec.get('impl')} failed (exit {proc.returncode}):\n{tail}"
        )
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result["process_wall_s"] = time.perf_counter() - start
    return result


def worker_main(cases: dict[str, Callable[[dict], dict]], spec_json: str) -> None:
    """The worker side: run `cases[spec["case"]](spec)` and print its result line."""
    spec = json.loads(spec_json)
    name = f"{spec['case']}/{spec['impl']}"
    if name not in cases:
        raise ValueError(f"unknown worker {name!r}; known: {sorted(cases)}")
    result = cases[name](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD={preload})"
    return "glibc malloc (default; no LD_PRELOAD)" if not preload else f"LD_PRELOAD={preload}"


def thread_settings() -> str:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "TF_NUM_INTRAOP_THREADS")
    set_vars = [f"{n}={os.environ[n]}" for n in names if n in os.environ]
    return ", ".join(set_vars) if set_vars else "no thread variables set (library defaults)"


def machine_header(packages: Sequence[str]) -> list[str]:
    """Lines describing the machine, the load on it, versions, allocator and threads."""
    load = os.getloadavg()
    cpus = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    lines = [
        f"- machine: {cpus} CPUs ({usable} usable), platform.processor()="
        f"{platform.processor()!r}, cpu model: {_cpu_model()}, {platform.machine()}, "
        f"{platform.system()} {platform.release()}",
        f"- load average at start (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        + ("  **busy machine: timings are not meaningful**" if load[0] > 0.5 * usable else ""),
        f"- python {platform.python_version()}; "
        + ", ".join(f"{p} {_version(p)}" for p in packages),
        f"- allocator: {allocator()}",
        f"- threads: {thread_settings()}; XLA CPU uses its default intra-op pool (all usable "
        "cores); torch's thread counts are measured in its workers (below)",
    ]
    return lines


# -- tables ---------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x):
        return "" if x is None else str(x)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(out)


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def fmt_s(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:,.1f}"


def fmt_ratio(ours: float | None, theirs: float | None, target: float) -> tuple[str, str]:
    """(speed-up of ours over theirs as "1.23x", whether it meets `target`)."""
    if not ours or not theirs:
        return "n/a", "n/a"
    ratio = ours / theirs
    return f"{ratio:.2f}x", ("met" if ratio >= target else "NOT met") + f" (>= {target:g}x)"


# -- shared model pieces ----------------------------------------------------------------------


def toy_config(d_model: int, n_heads: int, n_ctx: int, d_vocab: int):
    """The benchmarks' 2-layer attention-only toy: pre-LayerNorm, learned positions, and
    every bias TransformerLens always has (so both tools train the same parameters)."""
    import mechjax as mj

    return mj.presets.attn_only(
        2, d_model=d_model, n_heads=n_heads, n_ctx=n_ctx, d_vocab=d_vocab, use_bias=True
    )


def gemma2_two_layer(**widths):
    """`gemma2_2b` cut to 2 layers (one local, one global); `widths` override its sizes
    (the `--quick` runs shrink them)."""
    import mechjax as mj

    return mj.presets.gemma2_2b().replace(n_layers=2, layer_types=("local", "global"), **widths)


def numpy_params(cfg, seed: int = 0, noise: float = 0.1) -> dict:
    """Random float32 params of `cfg` as numpy arrays: matrices ~ N(0, 1/fan_in),
    embeddings ~ N(0, 1), norm weights 1 + N(0, noise^2), biases N(0, noise^2).

    numpy rather than `mj.init_params`: the latter compiles one random-number program per
    parameter shape, ~10 s for a tiny model on a busy 2-core machine. Norm weights and
    biases are randomised so that the parity checks see every parameter.
    """
    import jax

    import mechjax as mj

    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = path[-1].key
        z = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("_w"):
            return (1.0 - cfg.norm_weight_offset) + noise * z
        if name.startswith("b_") or name.endswith("_b"):
            return noise * z
        if name in ("W_E", "W_pos"):
            return z * (cfg.d_model**-0.5 if cfg.scale_embeddings else 1.0)
        return z * np.float32(shape[-2] ** -0.5)  # fan-in: the axis x @ W contracts

    shapes = mj.param_shapes(cfg)
    return jax.tree_util.tree_map_with_path(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))


def random_tokens(n_batches: int, batch: int, n_pos: int, vocab: int, seed: int = 1) -> np.ndarray:
    """tokens [n_batches, batch, n_pos] int64, uniform over the vocabulary."""
    return np.random.default_rng(seed).integers(0, vocab, size=(n_batches, batch, n_pos))
