"""Where a model's arrays live on a mesh (`mechjax.distributed.make_mesh`): the rules
that give every parameter, training state and batch its `NamedSharding`.

Tensor parallelism over the mesh's `model` axis follows the weights' meaning, as in
Megatron-LM: query/key/value and output projections split by head, MLP weights by
neuron (`d_mlp`), embedding and unembedding by vocabulary, so each device holds a slice
of every layer; everything else (norm weights, `d_model`-sized biases) is replicated.
An axis that the `model` axis does not divide (2 key/value heads on 4 devices) stays
whole. Fully sharded data parallelism (FSDP, `fsdp=True`) additionally splits each leaf
over the `data` axis, along its largest axis that `data` divides: a device then holds
1/(data x model) of the weights and optimiser state, and XLA gathers a layer's weights
when a computation needs them.

    mesh = make_mesh("data=2,model=2")
    params = shard_params(params, mesh)           # then forward / run_with_stream / sweeps
    with use_mesh(mesh):                          # sweeps spread their cells over `data`
        result = activation_patching(params, ...)

Training states (`mechjax.train`) carry a leading `model` axis (one entry per seed):
that axis goes over the mesh's `seed` axis and the rest of each leaf follows the
parameter rules. Arrays are placed with `jax.make_array_from_callback`, which works the
same with one process or many (each process passes the same host values and keeps only
its own devices' pieces).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# the axis of each block weight that the mesh's `model` axis splits (after the leading
# `layer` axis): heads for attention, neurons for the MLP
_BLOCK_MODEL_AXIS = {
    "W_Q": 1, "W_K": 1, "W_V": 1, "W_O": 1, "b_Q": 1, "b_K": 1, "b_V": 1,
    "W_in": 2, "W_gate": 2, "W_out": 1, "b_in": 1, "b_gate": 1,
    "ln_mlp_w": 1, "ln_mlp_b": 1,
}  # fmt: skip
# top-level weights: by vocabulary
_TOP_MODEL_AXIS = {"W_E": 0, "W_U": 1, "b_U": 0}


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, fsdp: bool) -> P:
    """The `PartitionSpec` of the parameter at `path` (`("blocks", "W_Q")`, `("W_E",)`)
    with this `shape`: `model` on its head / neuron / vocabulary axis when the mesh's
    `model` size divides it, and with `fsdp` also `data` on its largest remaining axis
    that `data` divides."""
    spec: list = [None] * len(shape)
    table = _BLOCK_MODEL_AXIS if path[0] == "blocks" else _TOP_MODEL_AXIS
    axis = table.get(path[-1])
    n_model, n_data = mesh.shape["model"], mesh.shape["data"]
    if axis is not None and n_model > 1 and shape[axis] % n_model == 0:
        spec[axis] = "model"
    if fsdp and n_data > 1:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n_data == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "data"
    return P(*spec)


def shape_of(x) -> tuple[int, ...]:
    """The shape of an array, a `jax.ShapeDtypeStruct` or a Python scalar."""
    return tuple(getattr(x, "shape", np.shape(x)))


def _paths(tree) -> list[tuple[str, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in flat]


def param_shardings(params, mesh: Mesh, *, fsdp: bool = False):
    """`NamedSharding`s for every leaf of `params` (same pytree)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specs = [
        NamedSharding(mesh, param_spec(path, shape_of(x), mesh, fsdp))
        for path, x in zip(_paths(params), leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, specs)


def place(tree, shardings):
    """`tree`'s arrays as global arrays with these `shardings` (same pytree). Every
    process passes the same values; each device receives its piece only."""

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree, shardings)


def shard_params(params, mesh: Mesh, *, fsdp: bool = False):
    """`params` placed on `mesh` by the rules above (`model` axis: heads, neurons,
    vocabulary; `fsdp`: also split over `data`). Every mechjax function then runs on
    them unchanged: jit follows the arrays' shardings."""
    return place(params, param_shardings(params, mesh, fsdp=fsdp))


def stacked_shardings(tree, params_like, mesh: Mesh, *, fsdp: bool = False):
    """Shardings for a pytree whose leaves carry a leading `model` (seed) axis: a
    training state. Every subtree shaped like the parameters (the parameters
    themselves, Adam's moments) follows the parameter rules after the `seed` axis;
    other leaves (step counts, keys) are split over `seed` only."""
    structure = jax.tree_util.tree_structure(params_like)

    def is_params(node) -> bool:
        return isinstance(node, dict) and jax.tree_util.tree_structure(node) == structure

    def rule(node):
        if is_params(node):
            leaves, treedef = jax.tree_util.tree_flatten(node)
            specs = [
                NamedSharding(mesh, P("seed", *param_spec(path, shape_of(x)[1:], mesh, fsdp)))
                for path, x in zip(_paths(node), leaves)
            ]
            return jax.tree_util.tree_unflatten(treedef, specs)
        spec = P("seed") if shape_of(node) else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(rule, tree, is_leaf=is_params)


def batch_sharding(mesh: Mesh, ndim: int, *, seed_axis: bool) -> NamedSharding:
    """Tokens `[seed, batch, pos]` (`seed_axis`) or `[batch, pos]`: the batch split over
    `data`, the models over `seed`."""
    spec = ("seed", "data") if seed_axis else ("data",)
    return NamedSharding(mesh, P(*spec, *([None] * (ndim - len(spec)))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def gather(tree, mesh: Mesh):
    """`tree` replicated on every device of `mesh` (a copy): readable on every process
    with `np.asarray`, and an input every jitted function accepts beside host arrays."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """Within the block, sweeps (`mechjax.causal`, steering) spread their cells over the
    mesh's `data` axis (`spread_cells`). `None` does nothing."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh):
        yield


def cell_devices() -> int:
    """The size of the `data` axis of the mesh in use (`use_mesh`), 1 outside one. Read
    while tracing: the compiled program is specialised to the mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "data" not in mesh.axis_names:
        return 1
    return int(mesh.shape["data"])


def spread_cells(x: jax.Array, axis: int) -> jax.Array:
    """`x` with its axis `axis` split over the `data` axis of the mesh in use (a
    sharding constraint: the partitioner runs each device's cells there)."""
    if cell_devices() == 1:
        return x
    spec = [None] * x.ndim
    spec[axis] = "data"
    return jax.lax.with_sharding_constraint(x, P(*spec))
