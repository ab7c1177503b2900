"""Read and write the safetensors format with numpy alone (memory-mapped reads).

The format, as documented by its authors (huggingface/safetensors, README "Format"):

```
[8 bytes]  N, an unsigned 64-bit little-endian integer: the header's length in bytes
[N bytes]  a UTF-8 JSON object:
             {"__metadata__": {str: str, ...},                       (optional)
              "<tensor name>": {"dtype": "F32", "shape": [2, 3],
                                "data_offsets": [begin, end]}, ...}
           (the writer may pad it with trailing spaces)
[rest]     the byte buffer; each tensor is its row-major little-endian bytes at
           buffer[begin:end], offsets relative to the start of the buffer
```

Tensors must not overlap and together must cover the buffer without holes.

Reading maps the file into memory: `SafetensorsFile.get(name)` is a read-only view of the
file's bytes, so only the tensors actually touched are read from disk. bfloat16 and the
8-bit floats come from `ml_dtypes` (a dependency of jax); the `safetensors` package is not
needed (tests use it as the independent reference).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

# safetensors dtype tag -> numpy dtype (explicitly little-endian where byte order matters)
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_TAGS = {dtype: tag for tag, dtype in DTYPES.items()}

_MAX_HEADER = 100_000_000  # the reference implementation's limit on the header's size


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a file: its dtype tag, shape and byte range in the buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numpy_dtype(self) -> np.dtype:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"safetensors dtype {self.dtype!r} has no numpy equivalent here; "
                f"supported: {sorted(DTYPES)}"
            )
        return DTYPES[self.dtype]


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse a file's header without touching the tensor bytes.

    Returns `(tensors, metadata, data_start)`: name -> `TensorInfo`, the `__metadata__`
    strings, and the file offset at which the byte buffer begins.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(
                f"{path}: header length {n} does not fit the file ({size} bytes); "
                "the file is truncated or not safetensors"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the header is not valid UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header must be a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            info = TensorInfo(
                str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), begin, end
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}: tensor {name!r} needs 'dtype', 'shape' and 'data_offsets', got {entry!r}"
            ) from None
        tensors[name] = info
    data_start = 8 + n
    _check_layout(path, tensors, size - data_start)
    return tensors, metadata, data_start


def _check_layout(path: str, tensors: dict[str, TensorInfo], buffer_size: int) -> None:
    """Byte ranges must match each tensor's size, not overlap, and fill the buffer."""
    problems = []
    covered = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.dtype in DTYPES:
            expected = math.prod(info.shape) * DTYPES[info.dtype].itemsize
            if info.end - info.begin != expected:
                problems.append(
                    f"{name} spans {info.end - info.begin} bytes but {info.dtype}{list(info.shape)} "
                    f"needs {expected}"
                )
        if info.begin != covered:
            problems.append(f"{name} starts at byte {info.begin}, expected {covered} (gap/overlap)")
        covered = max(covered, info.end)
    if covered != buffer_size:
        problems.append(f"tensors cover {covered} bytes of a {buffer_size}-byte buffer")
    if problems:
        raise ValueError(f"{path}: malformed safetensors layout: " + "; ".join(problems))


class SafetensorsFile(Mapping):
    """A memory-mapped safetensors file: a read-only mapping name -> numpy array.

    ```
    with SafetensorsFile(path) as f:
        f.info("w")          # TensorInfo(dtype='F32', shape=(2, 3), ...) without reading data
        w = np.array(f["w"]) # copy out before closing; f["w"] itself is a view of the file
    ```
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.tensors, self.metadata, self._data_start = read_header(self.path)
        self._map = None  # the whole file, mapped read-only on first access

    def _buffer(self):
        if self._map is None:
            if os.path.getsize(self.path) == self._data_start:  # no bytes: mmap would refuse
                return np.zeros(0, np.uint8)
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def release(self, name: str) -> None:
        """Let the kernel drop the pages of `name` from this process's resident memory
        (they stay in the page cache): a loader that has copied a tensor out calls this,
        so a shard's mapped pages do not add up to the shard's size on top of the copy
        (a mapped file's touched pages count in resident memory until unmapped)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.info(name)
        page = mmap.PAGESIZE
        start = -(-(self._data_start + info.begin) // page) * page  # whole pages inside
        stop = (self._data_start + info.end) // page * page
        if stop > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{name!r} is not in {self.path}")
        return self.tensors[name]

    def __getitem__(self, name: str) -> np.ndarray:
        """A read-only array viewing the file's bytes (no copy)."""
        info = self.info(name)
        dtype = info.numpy_dtype
        count = (info.end - info.begin) // dtype.itemsize
        buffer = self._buffer()
        offset = info.begin + (self._data_start if isinstance(buffer, mmap.mmap) else 0)
        return np.frombuffer(buffer, dtype, count, offset).reshape(info.shape)

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def close(self) -> None:
        """Drop the memory map (views handed out keep it alive until they are freed)."""
        self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_safetensors(path: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Read tensors into ordinary (writable, in-memory) numpy arrays; `names=None`: all."""
    with SafetensorsFile(path) as f:
        return {name: np.array(f[name]) for name in (f if names is None else names)}


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` (name -> array; jax arrays are fine) as a safetensors file.

    The header is padded with spaces so the byte buffer starts 8-byte aligned, as the
    reference writer does.
    """
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(
                f"tensor names must be strings other than '__metadata__', got {name!r}"
            )
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _TAGS:
            raise ValueError(
                f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store here; "
                f"cast it to one of {sorted(str(d) for d in _TAGS)}"
            )
        arrays[name] = np.asarray(array, dtype=dtype, order="C")  # keeps 0-d shapes

    header: dict = {}
    if metadata:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise ValueError(f"metadata must map str -> str; offending entries: {bad}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": _TAGS[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)

    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in arrays.values():
            f.write(array.reshape(-1).view(np.uint8).data)
