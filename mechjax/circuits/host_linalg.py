"""Non-symmetric eigenvalues on the host CPU, wherever the matrices live.

`jnp.linalg.eigvals` (LAPACK `geev`) is XLA's on the CPU; on a GPU JAX uses cuSOLVER's
`geev` or a host-LAPACK kernel depending on the build, and a TPU has none. The circuit
analyses therefore compute their small cores (`[..., d_head, d_head]`) on the default
device and hand them to `host_eigvals`, which runs `eig` on the CPU device: XLA's CPU
kernel whatever the backend (inside jit off the CPU, where nothing can be moved,
NumPy's LAPACK `geev` through a host callback).

    host_eigvals(x)   complex eigenvalues [..., n] of x [..., n, n], on x's device
    runs_on_cpu(x)    whether x's eig runs where x is (the routing decision)
    cpu_device()      the CPU device eig runs on (None without a CPU backend)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_eigvals = jax.jit(jnp.linalg.eigvals)


def runs_on_cpu(x) -> bool:
    """Whether `jnp.linalg.eigvals(x)` would run on a CPU: for a concrete JAX array,
    whether CPU devices hold all of it; for anything else (a tracer inside jit or vmap,
    whose placement is not known yet, or a NumPy array, which JAX puts on its default
    device), whether JAX's default backend is the CPU."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return all(d.platform == "cpu" for d in x.devices())
    return jax.default_backend() == "cpu"


def cpu_device():
    """The first CPU device, or None when JAX was started without the CPU backend
    (e.g. `JAX_PLATFORMS=cuda`)."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


def _numpy_eigvals(x: np.ndarray) -> np.ndarray:
    """NumPy's LAPACK `geev`, in x's precision (complex64 for float32)."""
    return np.linalg.eigvals(x).astype(np.result_type(x.dtype, np.complex64))


def host_eigvals(x) -> jax.Array:
    """Eigenvalues of the square matrices `x [..., n, n]`, complex `[..., n]`, as
    `jnp.linalg.eigvals(x)`, computed on the host CPU and returned on x's device.

    On a CPU (`runs_on_cpu`) this is `jnp.linalg.eigvals` itself, inside jit or not.
    Elsewhere a concrete array is copied to the CPU device, decomposed there under
    `jax.default_device(cpu)` and the eigenvalues copied back to x's device (to JAX's
    default device when x is spread over several); inside jit, where nothing can be
    moved, the eigenvalues come from NumPy's LAPACK through `jax.pure_callback`.
    Not differentiable off the CPU (eigenvalue gradients are rarely what a circuit
    analysis wants).
    """
    if not isinstance(x, jax.Array):  # NumPy data: on the default device, as jnp puts it
        x = jnp.asarray(x)
    if runs_on_cpu(x):
        return jnp.linalg.eigvals(x) if isinstance(x, jax.core.Tracer) else _eigvals(x)
    complex_dtype = jnp.result_type(x.dtype, jnp.complex64)
    if isinstance(x, jax.core.Tracer):
        out = jax.ShapeDtypeStruct(x.shape[:-1], complex_dtype)
        return jax.pure_callback(_numpy_eigvals, out, x, vmap_method="expand_dims")
    devices = x.devices()
    home = next(iter(devices)) if len(devices) == 1 else jax.devices()[0]
    cpu = cpu_device()
    if cpu is None:
        values = jnp.asarray(_numpy_eigvals(np.asarray(x)))
    else:
        with jax.default_device(cpu):
            values = _eigvals(jax.device_put(x, cpu))
    return jax.device_put(values, home)
