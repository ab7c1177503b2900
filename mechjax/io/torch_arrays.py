"""Arrays between numpy/JAX and torch, for the converters that hand tensors to torch.

torch is imported inside each function: `import mechjax` never needs it. bfloat16 travels
as raw 16-bit words, which numpy (via ml_dtypes) and torch lay out the same way.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

TORCH_DTYPES = ("float32", "bfloat16", "float16")  # the dtypes both sides share


def to_torch(x):
    import torch

    arr = np.array(x)  # a copy: jax buffers are read-only
    if arr.dtype == jnp.bfloat16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def to_numpy(t) -> np.ndarray:
    if not hasattr(t, "detach"):
        return np.asarray(t)
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(jnp.bfloat16)
    return t.numpy()


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def dtype_name(torch_dtype) -> str:
    name = str(torch_dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise ValueError(f"torch dtype {torch_dtype} is unsupported; use one of {TORCH_DTYPES}")
    return name
