"""Devices and processes: the mesh a computation runs on, and runs across several processes.

mechjax uses JAX's own sharding and nothing of its own making: a `jax.sharding.Mesh`
names the devices' axes, arrays carry `NamedSharding`s over it, and XLA's partitioner
(GSPMD) splits each compiled program and inserts the collectives. A mesh here always has
the three axes below, missing ones of size 1, so every sharding rule can name all of
them:

    seed    models trained together (the vmapped `model` axis of a training state)
    data    the batch of a training step, the cells of a sweep (data parallelism)
    model   attention heads, MLP neurons and the vocabulary of the weights (tensor
            parallelism, for models too big for one device)

    mesh = make_mesh("data=4")              # 4 devices, data parallel
    mesh = make_mesh("data=2,model=2")      # 2 x 2
    mesh = make_mesh("data=-1")             # every device on the data axis

Where the arrays go for a given mesh is `mechjax.model.sharding`.

Several processes (one per host, or one per GPU): start the same program in each with
`initialize()` first (or `mechjax --distributed ...`). It calls `jax.distributed.initialize`,
which reads JAX's coordinator from the environment on SLURM, Open MPI and TPU pods, or
from these variables:

    MECHJAX_COORDINATOR=host:port   the address of process 0 (any free port)
    MECHJAX_NUM_PROCESSES=N
    MECHJAX_PROCESS_ID=i            0 .. N - 1

Every process then sees every device in `jax.devices()` (its own in
`jax.local_devices()`); a mesh spans them all. Each process runs the same program:
computations are collective, files are written by process 0 (`is_coordinator`) and
orbax checkpoints by all processes together.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("seed", "data", "model")
COORDINATOR_ENV = "MECHJAX_COORDINATOR"
NUM_PROCESSES_ENV = "MECHJAX_NUM_PROCESSES"
PROCESS_ID_ENV = "MECHJAX_PROCESS_ID"


def parse_mesh(spec: str | dict | None, n_devices: int | None = None) -> dict[str, int]:
    """`{"seed": s, "data": d, "model": m}` from `"data=4"`, `"data=2,model=2"`, a dict
    of the same, or None (every device on `data`). One axis may be -1: all the devices
    the others leave. The sizes must multiply to the device count (`n_devices`, default
    all of them)."""
    n_devices = len(jax.devices()) if n_devices is None else n_devices
    if spec is None:
        spec = {"data": -1}
    if isinstance(spec, str):
        sizes = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, value = part.partition("=")
            try:
                sizes[name.strip()] = int(value) if eq else None
            except ValueError:
                sizes[name.strip()] = None
            if sizes[name.strip()] is None:
                raise ValueError(
                    f"mesh {spec!r}: {part!r} is not AXIS=SIZE; write e.g. 'data=4' or "
                    "'data=2,model=2'"
                )
    else:
        sizes = dict(spec)
    unknown = sorted(set(sizes) - set(AXES))
    if unknown:
        raise ValueError(f"mesh {spec!r}: unknown axes {unknown}; the axes are {list(AXES)}")
    sizes = {axis: int(sizes.get(axis, 1)) for axis in AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1 or any(size < 1 for size in sizes.values() if size != -1):
        raise ValueError(
            f"mesh {spec!r}: sizes must be positive, with at most one axis -1 (all the "
            "devices the other axes leave)"
        )
    fixed = int(np.prod([size for size in sizes.values() if size != -1]))
    if free:
        if n_devices % fixed:
            raise ValueError(
                f"mesh {spec!r}: {n_devices} devices do not divide into axes of {fixed}"
            )
        sizes[free[0]] = n_devices // fixed
    if int(np.prod(list(sizes.values()))) != n_devices:
        raise ValueError(
            f"mesh {spec!r} has {int(np.prod(list(sizes.values())))} devices but "
            f"{n_devices} are present; make the sizes multiply to {n_devices} (or use -1 "
            "for one axis), or start with another device count"
        )
    return sizes


def make_mesh(spec: str | dict | None = None, devices=None) -> Mesh:
    """A mesh with the axes `AXES` over `devices` (default: every device of every
    process), sized by `spec` (`parse_mesh`). The axes are JAX's `Auto` kind: arrays
    carry shardings and the partitioner propagates them through the program."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[axis] for axis in AXES)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def describe_mesh(mesh: Mesh) -> str:
    """`data=4` / `data=2,model=2` (axes of size 1 left out; `single device` for none)."""
    parts = [f"{axis}={size}" for axis, size in mesh.shape.items() if size > 1]
    return ",".join(parts) or "single device"


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run (`jax.distributed.initialize`) before anything else
    touches JAX's devices. Arguments default to the `MECHJAX_*` variables above; with
    none of them set, JAX's own detection (SLURM, Open MPI, TPU pods) applies. On CPU
    the processes exchange data over gloo. A no-op when already initialized."""
    coordinator = coordinator or os.environ.get(COORDINATOR_ENV)
    if num_processes is None and os.environ.get(NUM_PROCESSES_ENV):
        num_processes = _int_env(NUM_PROCESSES_ENV)
    if process_id is None and os.environ.get(PROCESS_ID_ENV):
        process_id = _int_env(PROCESS_ID_ENV)
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            f"a multi-process run needs all of {COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and "
            f"{PROCESS_ID_ENV} (or none of them, for SLURM / Open MPI detection)"
        )
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def _int_env(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not an integer") from None


def process_count() -> int:
    """The number of processes in the run (1 unless `initialize` joined several)."""
    return jax.process_count()


def is_coordinator() -> bool:
    """Whether this process writes files: process 0 (always true with one process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
