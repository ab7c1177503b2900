"""Reading safetensors into preallocated arrays: our memory-mapped reader against the
`safetensors` library's `safe_open(..., framework="numpy")`.

    python experiments/benchmarks/load_safetensors.py             ~1 GiB files (idle machine)
    python experiments/benchmarks/load_safetensors.py --quick     ~64 MiB, a smoke run
    python experiments/benchmarks/load_safetensors.py --gib 2 --repeats 5

What `mechjax.io.load_hf` does with every tensor of a checkpoint, timed alone: the file
holds a Llama-like model (an embedding `[32000, 2048]` and per layer q/o `[2048, 2048]`,
up/down `[5632, 2048]` / `[2048, 5632]` in `nn.Linear`'s `[out, in]` layout), enough
layers for the requested size; each tensor goes into a preallocated array of the
requested dtype, the layer matrices transposed into stacked `[layer, in, out]` arrays and
the embedding, last, copied as it is (as the loader lays them out). Three readers:

- mechjax: `SafetensorsFile` (numpy memory map); each tensor is a view of the mapped
  file, copied (and cast) once, straight into its place;
- safe_open: the library's `get_tensor` (numpy framework), then copied into place;
- safe_open alone: `get_tensor` of every tensor with nothing placed (the library's own
  cost; a real loader still has to stack, transpose and cast).

Each (reader, file, target dtype) runs in a fresh worker process (`common.py`), `--repeats`
times, interleaved; the table gives medians. The files are written once under `$TMPDIR`
and read warm (from the page cache, after a first untimed read): this compares the copies
and allocations, not the disk.

- peak RSS Δ: the worker's resident high-water mark (VmHWM) minus its RSS after imports.
  It counts the file's mapped pages both readers touch (the library maps the file too).
- peak anon Δ: the largest anonymous resident memory (`RssAnon`, sampled every 2 ms)
  above the baseline: the arrays a reader allocates, without the page cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PeakMemory,
    machine_header,
    markdown_table,
    run_worker,
    worker_main,
)

D_MODEL, D_MLP, VOCAB = 2048, 5632, 32_000
LAYER_SHAPES = {  # nn.Linear [out, in]
    "q_proj": (D_MODEL, D_MODEL),
    "o_proj": (D_MODEL, D_MODEL),
    "up_proj": (D_MLP, D_MODEL),
    "down_proj": (D_MODEL, D_MLP),
}
READERS = ("mechjax", "safe_open", "safe_open_alone")


# -- the parent: files ------------------------------------------------------------------------


def n_layers_for(gib: float, itemsize: int) -> int:
    per_layer = sum(a * b for a, b in LAYER_SHAPES.values()) * itemsize
    rest = gib * 2**30 - VOCAB * D_MODEL * itemsize
    return max(1, round(rest / per_layer))


def write_file(path: str, dtype: str, n_layers: int) -> float:
    """A random checkpoint-like file of `dtype` ("float32" / "bfloat16"); returns its GiB."""
    import ml_dtypes

    from mechjax.io.safetensors_io import save_safetensors

    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    rng = np.random.default_rng(0)

    def draw(shape):
        return rng.standard_normal(shape, np.float32).astype(np_dtype)

    tensors = {"model.embed_tokens.weight": draw((VOCAB, D_MODEL))}
    for i in range(n_layers):
        for name, shape in LAYER_SHAPES.items():
            tensors[f"model.layers.{i}.{name}.weight"] = draw(shape)
    save_safetensors(path, tensors, {"format": "pt"})
    return os.path.getsize(path) / 2**30


# -- the worker: one read ---------------------------------------------------------------------


class AnonPeak:
    """The peak of `RssAnon` (anonymous resident memory) above its value at start, sampled
    every `interval` seconds on a thread."""

    def __init__(self, interval: float = 0.002):
        self.baseline = self.read()
        self.peak = self.baseline
        self.interval = interval
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @staticmethod
    def read() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def loop(self):
        while self.running:
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def stop_mib(self) -> float:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.read())
        return (self.peak - self.baseline) / 1024


def copy_into(dst: np.ndarray, src: np.ndarray, block: int = 64) -> None:
    """dst[...] = src (cast); a transposed view in strips of `block` rows, as the loader
    (same dtypes are copied as unsigned integers of their width: faster for bfloat16)."""
    if dst.dtype == src.dtype:
        bits = np.dtype(f"u{dst.dtype.itemsize}")
        dst, src = dst.view(bits), src.view(bits)
    if src.flags.c_contiguous:
        np.copyto(dst, src, casting="unsafe")
        return
    for start in range(0, dst.shape[-1], block):
        np.copyto(
            dst[..., start : start + block], src[..., start : start + block], casting="unsafe"
        )


def read_case(spec: dict) -> dict:
    import ml_dtypes

    from mechjax.io.safetensors_io import SafetensorsFile, read_header

    reader, path = spec["impl"], spec["file"]
    np_dtype = np.dtype(np.float32 if spec["dtype"] == "float32" else ml_dtypes.bfloat16)
    if reader != "mechjax":
        from safetensors import safe_open
    tensors = read_header(path)[0]
    n_layers = sum(1 for n in tensors if n.endswith("q_proj.weight"))

    def places():
        """name -> the preallocated array it goes into and whether it is transposed."""
        stacks = {k: np.empty((n_layers, s[1], s[0]), np_dtype) for k, s in LAYER_SHAPES.items()}
        out = {}
        for i in range(n_layers):
            for k in LAYER_SHAPES:
                out[f"model.layers.{i}.{k}.weight"] = (stacks[k][i], True)
        # last, as GPT-2's transformer.wte (names sort after the layers'): a reader's
        # transient copy of the largest tensor then adds to everything already placed
        out["model.embed_tokens.weight"] = (np.empty((VOCAB, D_MODEL), np_dtype), False)
        return out

    def run_once():
        if reader == "mechjax":
            target = places()
            with SafetensorsFile(path) as f:
                for name, (dst, transposed) in target.items():
                    src = f[name]
                    copy_into(dst, src.T if transposed else src)
            return target
        if reader == "safe_open":
            target = places()
            with safe_open(path, framework="numpy") as f:
                for name, (dst, transposed) in target.items():
                    src = f.get_tensor(name)
                    copy_into(dst, src.T if transposed else src)
                    del src
            return target
        with safe_open(path, framework="numpy") as f:  # every tensor, nothing placed
            for name in f.keys():
                f.get_tensor(name)
        return None

    memory = PeakMemory()
    anon = AnonPeak()
    start = time.perf_counter()
    result = run_once()
    seconds = time.perf_counter() - start
    anon_mib = anon.stop_mib()
    rss_mib = memory.delta_mib()
    check = None
    if result is not None:  # one value read back, so the copies cannot be skipped
        check = float(result["model.embed_tokens.weight"][0][0, 0])
    return dict(seconds=seconds, rss_mib=rss_mib, anon_mib=anon_mib, check=check)


# -- the parent: the table --------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gib", type=float, default=1.0, help="size of each file (GiB)")
    parser.add_argument("--quick", action="store_true", help="~64 MiB files, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker_main({f"read/{r}": read_case for r in READERS}, args.worker)
        return
    gib, repeats = (1 / 16, 1) if args.quick else (args.gib, args.repeats)

    print("\n".join(machine_header(["numpy", "safetensors", "ml_dtypes"])))
    rows, folder = [], tempfile.mkdtemp(prefix="load_safetensors_")
    try:
        files = {}
        for dtype, itemsize in (("float32", 4), ("bfloat16", 2)):
            path = os.path.join(folder, f"{dtype}.safetensors")
            size = write_file(path, dtype, n_layers_for(gib, itemsize))
            files[dtype] = (path, size)
            with open(path, "rb") as f:  # into the page cache: every reader reads it warm
                while f.read(1 << 24):
                    pass
        cases = [
            ("float32", "float32"),
            ("bfloat16", "bfloat16"),
            ("bfloat16", "float32"),
        ]
        for stored, target in cases:
            path, size = files[stored]
            results = {r: [] for r in READERS}
            for _ in range(repeats):  # interleaved, so drift hits every reader alike
                for reader in READERS:
                    if reader == "safe_open_alone" and stored != target:
                        continue  # the library returns the stored dtype; nothing to cast here
                    spec = dict(case="read", impl=reader, file=path, dtype=target)
                    results[reader].append(run_worker(__file__, spec, timeout=1800))
            for reader, runs in results.items():
                if not runs:
                    continue
                seconds = statistics.median(r["seconds"] for r in runs)
                rows.append(
                    [
                        f"{stored} -> {target}" if reader != "safe_open_alone" else stored,
                        f"{size:.2f}",
                        reader.replace("_", " "),
                        f"{seconds:.2f}",
                        f"{size / seconds:.2f}",
                        f"{statistics.median(r['rss_mib'] for r in runs):,.0f}",
                        f"{statistics.median(r['anon_mib'] for r in runs):,.0f}",
                    ]
                )
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    print(f"- {repeats} fresh worker(s) per row, median; files read warm from the page cache")
    print()
    headers = ["file -> arrays", "GiB", "reader", "s", "GiB/s", "peak RSS Δ MiB"]
    print(markdown_table(headers + ["peak anon Δ MiB"], rows))


if __name__ == "__main__":
    main()
