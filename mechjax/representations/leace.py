"""LEACE: least-squares concept erasure (Belrose et al. 2023, "LEACE: Perfect linear
concept erasure in closed form").

Given activations `x [d]` and a concept `z [k]` (one-hot classes, or any vector), LEACE
is the affine map `r(x) = x - M (x - mean_x)` that makes every linear predictor of `z`
from `r(x)` no better than a constant (the class-conditional means of `r(x)` coincide:
`Cov(r(x), z) = 0`), while moving `x` as little as possible in the Mahalanobis sense.
In closed form, with `W = Cov(x)^{-1/2}` (pseudo-inverse square root) and `U` the left
singular vectors of `W Cov(x, z)` (rank <= k - 1 for k classes):

    M = W^+ U U^T W                    (a rank-r perturbation of the identity)

stored as `left = W^+ U [d, r]` and `right = U^T W [r, d]`. The "oracle" variant, which
may also read z at erasure time, is `r(x, z) = x - Cov(x, z) Cov(z)^+ (z - mean_z)`.

    fitter = LeaceFitter(d_model, n_classes)       streaming moments, float64
    fitter.update(x [n, d], z [n] or [n, k])       any number of times
    eraser = fitter.eraser()                       -> LeaceEraser (a pytree)
    left, right, bias = fitter.factors()           the same in float64 (numpy)
    eraser(x)                                      x [..., d] with the concept erased
    erase_edit(eraser, "resid_post", layer=3)      the same, inside the forward pass

Options as EleutherAI's `concept-erasure` names them: `affine` (subtract and add back
the mean; False erases linearly around 0), `svd_tol` (singular values of `W Cov(x, z)`
at or below it are dropped; default: those under 1e-8 of the largest, i.e.
numerically zero ones), `shrinkage`
(optimal linear shrinkage of `Cov(x)` toward a scaled identity, for few samples; see
`optimal_linear_shrinkage`), and `constrain_cov_trace` is not implemented (off here: the erasure is the
paper's minimal one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..model import edits


@struct.dataclass
class LeaceEraser:
    """`r(x) = x - ((x - bias) @ right.T) @ left.T`: left, right `[d, r]` / `[r, d]`,
    bias `[d]` (zeros for a linear eraser). A pytree: it vmaps, jits and rides in edits."""

    left: jax.Array
    right: jax.Array
    bias: jax.Array

    @property
    def P(self) -> jax.Array:
        """The linear part `I - left @ right` `[d, d]` (`r(x) = bias + (x - bias) @ P.T`)."""
        return jnp.eye(self.left.shape[0], dtype=self.left.dtype) - self.left @ self.right

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def __call__(self, x: jax.Array) -> jax.Array:
        """Erase from `x [..., d]` (computed in the eraser's dtype, returned in x's)."""
        dtype = x.dtype
        h = x.astype(self.left.dtype)
        out = h - ((h - self.bias) @ self.right.T) @ self.left.T
        return out.astype(dtype)


class LeaceFitter:
    """Streaming first and second moments of `(x, z)` in float64, so an eraser can be
    fitted on more activations than fit in memory (Chan et al.'s pairwise update of
    means and co-moments, batch by batch)."""

    def __init__(self, x_dim: int, z_dim: int):
        if x_dim < 1 or z_dim < 1:
            raise ValueError(f"x_dim and z_dim must be positive, got {x_dim}, {z_dim}")
        self.x_dim, self.z_dim = int(x_dim), int(z_dim)
        self.n = 0
        self.mean_x = np.zeros(x_dim)
        self.mean_z = np.zeros(z_dim)
        self.comoment_xx = np.zeros((x_dim, x_dim))  # sum (x - mean_x)(x - mean_x)^T
        self.comoment_xz = np.zeros((x_dim, z_dim))
        self.comoment_zz = np.zeros((z_dim, z_dim))

    def update(self, x, z) -> LeaceFitter:
        """Add `x [n, x_dim]` with concepts `z`: integer class ids `[n]` (one-hot over
        z_dim classes) or vectors `[n, z_dim]`. Returns self."""
        x = np.asarray(x, np.float64).reshape(-1, self.x_dim)
        z = self._as_matrix(z, len(x))
        m = len(x)
        if m == 0:
            return self
        bx, bz = x.mean(0), z.mean(0)
        dx, dz = x - bx, z - bz
        total = self.n + m
        shift_x, shift_z = bx - self.mean_x, bz - self.mean_z
        weight = self.n * m / total
        self.comoment_xx += dx.T @ dx + weight * np.outer(shift_x, shift_x)
        self.comoment_xz += dx.T @ dz + weight * np.outer(shift_x, shift_z)
        self.comoment_zz += dz.T @ dz + weight * np.outer(shift_z, shift_z)
        self.mean_x += shift_x * (m / total)
        self.mean_z += shift_z * (m / total)
        self.n = total
        return self

    def _as_matrix(self, z, n: int) -> np.ndarray:
        z = np.asarray(z)
        if z.ndim == 1 and np.issubdtype(z.dtype, np.integer):
            if z.size and (z.min() < 0 or z.max() >= self.z_dim):
                raise ValueError(
                    f"class ids must lie in [0, {self.z_dim}) (z_dim={self.z_dim}); found "
                    f"{np.unique(z[(z < 0) | (z >= self.z_dim)])[:10].tolist()}"
                )
            z = np.eye(self.z_dim)[z]
        z = np.asarray(z, np.float64).reshape(len(z), -1) if z.ndim else z
        if z.shape != (n, self.z_dim):
            raise ValueError(
                f"z must be class ids [n={n}] or vectors [n={n}, z_dim={self.z_dim}], got "
                f"shape {np.shape(z)}: one label per activation row"
            )
        return z

    def covariances(self, *, shrinkage: bool = False):
        """`(Cov(x), Cov(x, z), Cov(z))` with the n - 1 normaliser (float64)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples to estimate covariances, got {self.n}")
        if shrinkage:  # the estimator is defined on the n-normalised covariance
            cov_xx = optimal_linear_shrinkage(self.comoment_xx / self.n, self.n)
        else:
            cov_xx = self.comoment_xx / (self.n - 1)
        return cov_xx, self.comoment_xz / (self.n - 1), self.comoment_zz / (self.n - 1)

    def factors(
        self, *, affine: bool = True, svd_tol: float | None = None, shrinkage: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(left [d, r], right [r, d], bias [d])` of the eraser in float64 (numpy)."""
        cov_xx, cov_xz, _ = self.covariances(shrinkage=shrinkage)
        eigvals, eigvecs = np.linalg.eigh(cov_xx)
        keep = eigvals > eigvals[-1] * self.x_dim * np.finfo(np.float64).eps
        root = np.sqrt(np.clip(eigvals, 0.0, None))
        whiten = (eigvecs * np.where(keep, 1.0 / np.where(keep, root, 1.0), 0.0)) @ eigvecs.T
        unwhiten = (eigvecs * np.where(keep, root, 0.0)) @ eigvecs.T
        u, s, _ = np.linalg.svd(whiten @ cov_xz, full_matrices=False)
        # numerically zero: e.g. the direction along which one-hot classes sum to one
        tol = s.max(initial=0.0) * 1e-8 if svd_tol is None else svd_tol
        u = u[:, s > tol]
        bias = self.mean_x if affine else np.zeros(self.x_dim)
        return unwhiten @ u, u.T @ whiten, bias

    def eraser(
        self,
        *,
        affine: bool = True,
        svd_tol: float | None = None,
        shrinkage: bool = False,
        dtype=jnp.float32,
    ) -> LeaceEraser:
        """The LEACE eraser of the statistics so far (see the module docstring)."""
        left, right, bias = self.factors(affine=affine, svd_tol=svd_tol, shrinkage=shrinkage)
        as_array = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        return LeaceEraser(left=as_array(left), right=as_array(right), bias=as_array(bias))

    def oracle(self, x, z) -> np.ndarray:
        """Oracle LEACE: `x - Cov(x, z) Cov(z)^+ (z - mean_z)` for activations `x [n, d]`
        whose concepts `z` are known at erasure time (float64)."""
        x = np.asarray(x, np.float64).reshape(-1, self.x_dim)
        z = self._as_matrix(z, len(x))
        _, cov_xz, cov_zz = self.covariances()
        return x - (z - self.mean_z) @ np.linalg.pinv(cov_zz, hermitian=True) @ cov_xz.T


def fit_leace(x, z, n_classes: int | None = None, **options) -> LeaceEraser:
    """Fit an eraser on `x [n, d]` and concepts `z` (class ids `[n]`, then `n_classes`
    or `max + 1` classes, or vectors `[n, k]`) in one call; options as `eraser`."""
    x = np.asarray(x)
    z_arr = np.asarray(z)
    if z_arr.ndim == 1 and np.issubdtype(z_arr.dtype, np.integer):
        k = int(n_classes if n_classes is not None else z_arr.max(initial=0) + 1)
    else:
        k = int(z_arr.reshape(len(z_arr), -1).shape[1])
    return LeaceFitter(x.shape[-1], k).update(x, z).eraser(**options)


def optimal_linear_shrinkage(cov: np.ndarray, n: int) -> np.ndarray:
    """Shrink the covariance `S [p, p]` of `n` samples (normalised by n) toward
    `(tr(S)/p) I` with the weight that is asymptotically optimal in Frobenius norm as p
    and n grow together (Bodnar, Gupta & Parolya 2014, "On the strong convergence of the
    optimal linear shrinkage estimator for large dimensional covariance matrix"):
    `alpha S + (1 - alpha) (tr(S)/p) I`, `alpha = 1 - tr(S)^2 / (n (||S||_F^2 -
    tr(S)^2 / p))`, clipped to [0, 1]."""
    p = cov.shape[0]
    tr = np.trace(cov)
    spread = np.sum(cov * cov) - tr**2 / p
    alpha = 0.0 if spread <= 0 else float(np.clip(1.0 - tr**2 / (n * spread), 0.0, 1.0))
    return alpha * cov + (1.0 - alpha) * (tr / p) * np.eye(p)


def _erase(act: jax.Array, eraser: LeaceEraser) -> jax.Array:
    return eraser(act)


def erase_edit(eraser: LeaceEraser, site: str, *, layer=None, pos=None) -> edits.Edit:
    """An edit that applies `eraser` to `site`'s activation `[..., d]` inside the forward
    pass (the generic `edits.transform`): e.g. `erase_edit(eraser, "resid_post", layer=3)`.
    With a per-layer stack of erasers (leaves `[layer, ...]`), pass `layer=None` and build
    the edit with `edits.transform(site, ..., params_have_layer_axis=True)`."""
    return edits.transform(site, _erase, eraser, layer=layer, pos=pos)
