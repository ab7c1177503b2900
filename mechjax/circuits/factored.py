"""`FactoredMatrix`: a low-rank matrix `A @ B` kept as its two factors.

Circuits such as `W_E W_QK W_E^T` are vocab x vocab matrices of rank <= d_head. Kept as
`A [..., m, r] @ B [..., r, n]` they cost O((m + n) r) memory, and everything
interpretability asks of them reduces to r x r problems (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"; the names are TransformerLens's
`FactoredMatrix`, the vocabulary users know: `AB`, `BA`, `eigenvalues`, `S`, `U`, `Vh`
(properties), `svd()`, `norm()`, `collapse_l()`, `collapse_r()`):

* eigenvalues: the nonzero eigenvalues of `A B` [m, m] are those of `B A` [r, r]
  (Sylvester's determinant identity `det(I_m - t A B) = det(I_r - t B A)`);
* SVD: thin QR `A = Q_A R_A`, `B^T = Q_B R_B`, then `A B = Q_A (R_A R_B^T) Q_B^T` and only
  the small core `R_A R_B^T` needs an SVD;
* Frobenius norm: `||A B||^2 = trace(A^T A B B^T)`.

Leading axes (e.g. `[layer, head]`) broadcast between A and B, so one `FactoredMatrix`
holds every head's circuit and each method is one vectorised call. It is a pytree
(`flax.struct.dataclass`): it passes through `jax.jit` and `jax.vmap`.

`eigenvalues` (non-symmetric, LAPACK `geev`) computes `B @ A` where the factors are and
its `eig` on the host CPU (`mechjax.circuits.host_linalg.host_eigvals`), returning the
eigenvalues on the factors' device: nothing to move by hand on a GPU or TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .host_linalg import host_eigvals


def _leading_shape(a, b) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])))


@struct.dataclass
class FactoredMatrix:
    """The matrix `A @ B`, never formed unless `AB` is read.

    A `[..., m, r]`, B `[..., r, n]`; leading axes broadcast. `shape` is
    `(*leading, m, n)`.
    """

    A: jax.Array
    B: jax.Array

    # numpy defers `ndarray @ FactoredMatrix` to __rmatmul__ instead of making object arrays
    __array_ufunc__ = None

    def __post_init__(self):
        # jax rebuilds pytrees with placeholders (None, object()) in places; only check arrays
        a, b = self.A, self.B
        if not (hasattr(a, "shape") and hasattr(b, "shape")):
            return
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(
                f"FactoredMatrix: A and B must be at least 2-D ([..., m, r] and [..., r, n]), "
                f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"FactoredMatrix: inner dimensions differ: A {tuple(a.shape)} has r={a.shape[-1]}"
                f" but B {tuple(b.shape)} has r={b.shape[-2]}"
            )
        try:
            _leading_shape(a, b)
        except ValueError:
            raise ValueError(
                f"FactoredMatrix: leading axes of A {tuple(a.shape[:-2])} and B "
                f"{tuple(b.shape[:-2])} do not broadcast"
            ) from None

    # -- shape --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (*_leading_shape(self.A, self.B), self.A.shape[-2], self.B.shape[-1])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def inner_dim(self) -> int:
        """r, the shared dimension of the factors (an upper bound on the rank)."""
        return self.A.shape[-1]

    def __getitem__(self, index) -> FactoredMatrix:
        """Index the leading axes only, e.g. `fm[layer, head]`."""
        lead = _leading_shape(self.A, self.B)
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) > len(lead) or any(i is Ellipsis for i in index):
            raise ValueError(
                f"FactoredMatrix: index only the {len(lead)} leading axes {lead} "
                "(no Ellipsis); take .AB first to index matrix entries"
            )
        a = jnp.broadcast_to(self.A, lead + self.A.shape[-2:])
        b = jnp.broadcast_to(self.B, lead + self.B.shape[-2:])
        return FactoredMatrix(a[index], b[index])

    @property
    def T(self) -> FactoredMatrix:
        """The transpose `B^T A^T`."""
        return FactoredMatrix(jnp.swapaxes(self.B, -1, -2), jnp.swapaxes(self.A, -1, -2))

    # -- products -----------------------------------------------------------------------------
    def __matmul__(self, other):
        """`self @ other`. A FactoredMatrix times a matrix stays factored with inner r; a
        vector `[n]` gives a dense vector; two factored matrices stay factored through the
        smaller of their inner dimensions."""
        if isinstance(other, FactoredMatrix):
            middle = self.B @ other.A  # [..., r1, r2]
            if self.inner_dim <= other.inner_dim:
                return FactoredMatrix(self.A, middle @ other.B)
            return FactoredMatrix(self.A @ middle, other.B)
        other = jnp.asarray(other)
        if other.ndim == 1:
            return jnp.einsum("...mr,...r->...m", self.A, self.B @ other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other):
        """`other @ self` for an array `other` (`[..., p, m]`, or a vector `[m]`)."""
        other = jnp.asarray(other)
        if other.ndim == 1:
            return jnp.einsum("...r,...rn->...n", other @ self.A, self.B)
        return FactoredMatrix(other @ self.A, self.B)

    # -- dense ----------------------------------------------------------------------------------
    @property
    def AB(self) -> jax.Array:
        """The dense matrix `A @ B` `[..., m, n]`."""
        return self.A @ self.B

    @property
    def BA(self) -> jax.Array:
        """`B @ A` `[..., r, r]` (square matrices only): shares A@B's nonzero eigenvalues."""
        self._require_square("BA")
        return self.B @ self.A

    def _require_square(self, what: str) -> None:
        m, n = self.shape[-2:]
        if m != n:
            raise ValueError(f"FactoredMatrix.{what} needs a square matrix, got shape {self.shape}")

    # -- spectra ----------------------------------------------------------------------------------
    @property
    def eigenvalues(self) -> jax.Array:
        """The eigenvalues of `B @ A`, complex `[..., r]`.

        For r <= m these are A@B's eigenvalues except for m - r extra zeros (A@B has rank
        <= r); for r > m they are A@B's m eigenvalues plus r - m zeros. `B @ A` is
        formed where the factors are, its `eig` runs on the host CPU (`host_eigvals`;
        inside jit on a GPU, through a host callback) and the eigenvalues come back on
        the factors' device.
        """
        self._require_square("eigenvalues")
        return host_eigvals(self.B @ self.A)

    def _compress(self):
        """`A @ B = Q_A @ core @ Q_B^T` with orthonormal columns in Q_A [m, kA], Q_B [n, kB]
        (thin QR of A and of B^T) and `core = R_A R_B^T` [kA, kB], kA = min(m, r)."""
        q_a, r_a = jnp.linalg.qr(self.A)
        q_b, r_b = jnp.linalg.qr(jnp.swapaxes(self.B, -1, -2))
        return q_a, r_a @ jnp.swapaxes(r_b, -1, -2), q_b

    def svd(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Thin SVD `A @ B = U @ diag(S) @ Vh`: U `[..., m, k]`, S `[..., k]` (descending),
        Vh `[..., k, n]`, k = min(m, r, n). Singular values beyond the rank are ~0."""
        q_a, core, q_b = self._compress()
        u, s, vh = jnp.linalg.svd(core, full_matrices=False)
        return q_a @ u, s, vh @ jnp.swapaxes(q_b, -1, -2)

    @property
    def S(self) -> jax.Array:
        """The k = min(m, r, n) largest singular values `[..., k]`, descending."""
        return jnp.linalg.svd(self._compress()[1], compute_uv=False)

    @property
    def U(self) -> jax.Array:
        """The left singular vectors `[..., m, k]` of `svd()`."""
        return self.svd()[0]

    @property
    def Vh(self) -> jax.Array:
        """The right singular vectors `[..., k, n]` of `svd()`."""
        return self.svd()[2]

    def norm(self) -> jax.Array:
        """Frobenius norm `[...]`, via `trace((A^T A)(B B^T))` (r x r Gram matrices)."""
        gram_a = jnp.swapaxes(self.A, -1, -2) @ self.A
        gram_b = self.B @ jnp.swapaxes(self.B, -1, -2)
        # both Gram matrices are symmetric, so the trace of the product is an entrywise sum
        squared = jnp.sum(gram_a * gram_b, axis=(-2, -1))
        return jnp.sqrt(jnp.maximum(squared, 0.0))

    # -- norm-preserving reductions (composition scores) -----------------------------------------
    def collapse_l(self) -> jax.Array:
        """`R_A @ B` `[..., kA, n]` with `A = Q_A R_A`: dropping the orthonormal Q_A keeps
        every Frobenius norm of a product `(A @ B) @ X`, since `||Q_A Y|| = ||Y||`."""
        _, r_a = jnp.linalg.qr(self.A)
        return r_a @ self.B

    def collapse_r(self) -> jax.Array:
        """`A @ R_B^T` `[..., m, kB]` with `B^T = Q_B R_B`: keeps every Frobenius norm of a
        product `X @ (A @ B)`."""
        _, r_b = jnp.linalg.qr(jnp.swapaxes(self.B, -1, -2))
        return self.A @ jnp.swapaxes(r_b, -1, -2)
