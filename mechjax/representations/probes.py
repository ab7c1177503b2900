"""Linear probes: is a quantity linearly readable from the activations at a site?

    fit_ridge(x, y, alpha=1.0)                 -> (W [d, t], b [t])   closed form
    fit_logistic(x, labels, n_classes, C=1.0)  -> (W [d, k], b [k])   L-BFGS (optax)
    site_activations(params, cfg, tokens, site, pos=None)  -> [layer, example, d]
    probe(acts, labels, kind=..., ...)         -> ProbeResult, every leading axis of
                                                  `acts [..., example, d]` (layers,
                                                  positions) fitted in one vmapped call
    control_labels(token_ids, labels, seed)    Hewitt & Liang 2019's control task

Ridge regression minimises `||y - x W - b||^2 + alpha ||W||^2` (intercept unpenalised):
with centred x and y, `W = (X^T X + alpha I)^{-1} X^T Y`. Logistic regression is
multinomial, minimising `C sum_i CE(softmax(x_i W + b), y_i) + ||W||^2 / 2` — the
objective and the `C` of scikit-learn's `LogisticRegression` (intercept unpenalised).

A probe that fits is not yet evidence the model uses the information: "decodable does
not always mean causally used" (seed 002). Hewitt & Liang's control task gives each token
type a random label drawn from the task's label distribution; a probe expressive enough
to memorise types scores well on it too. Selectivity = task accuracy - control accuracy
on held-out examples; high selectivity means the probe reads the representation rather
than memorising the tokens.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..causal import sweep
from ..model.sites import SITES, available_sites
from ..model.transformer import run

KINDS = ("ridge", "logistic")


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Probes fitted for every leading index of the activations (e.g. `[layer]` or
    `[layer, pos]`): weights `[..., d, out]`, bias `[..., out]`; train_score and
    test_score `[...]` (accuracy for logistic probes, R^2 for ridge); control_score
    `[...]` (accuracy of the same probe family on the control task) or None."""

    kind: str
    weights: np.ndarray
    bias: np.ndarray
    train_score: np.ndarray
    test_score: np.ndarray
    control_score: np.ndarray | None = None

    @property
    def selectivity(self) -> np.ndarray | None:
        """Held-out task accuracy minus held-out control accuracy (Hewitt & Liang)."""
        return None if self.control_score is None else self.test_score - self.control_score


def fit_ridge(x: jax.Array, y: jax.Array, alpha: float = 1.0):
    """Ridge regression of `y [n] or [n, t]` on `x [n, d]`: `(W [d, t], b [t])`."""
    y2 = y[:, None] if y.ndim == 1 else y
    mean_x, mean_y = x.mean(0), y2.mean(0)
    xc, yc = x - mean_x, y2 - mean_y
    gram = xc.T @ xc + alpha * jnp.eye(x.shape[1], dtype=x.dtype)
    W = jnp.linalg.solve(gram, xc.T @ yc)
    return W, mean_y - mean_x @ W


def fit_logistic(x: jax.Array, labels: jax.Array, n_classes: int, C: float = 1.0, steps=200):
    """Multinomial logistic regression of integer `labels [n]` on `x [n, d]`:
    `(W [d, n_classes], b [n_classes])`, by `steps` L-BFGS iterations (optax, with its
    zoom line search) on scikit-learn's objective."""
    onehot = jax.nn.one_hot(labels, n_classes, dtype=x.dtype)
    # standardise for conditioning; the weights are mapped back after fitting
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale

    def objective(p):  # p["W"] acts on standardised x; the penalty is on x's own weights
        logits = z @ p["W"] + p["b"]
        ce = -(onehot * jax.nn.log_softmax(logits)).sum()
        return C * ce + 0.5 * jnp.sum((p["W"] / scale[:, None]) ** 2)

    params = {"W": jnp.zeros((x.shape[1], n_classes), x.dtype), "b": jnp.zeros(n_classes, x.dtype)}
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        return (optax.apply_updates(params, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=steps)
    W = params["W"] / scale[:, None]
    return W, params["b"] - mean @ W


def r2_score(y: jax.Array, pred: jax.Array) -> jax.Array:
    """Coefficient of determination, averaged over targets (as scikit-learn's default)."""
    y2 = y[:, None] if y.ndim == 1 else y
    pred = pred.reshape(y2.shape)
    residual = ((y2 - pred) ** 2).sum(0)
    total = ((y2 - y2.mean(0)) ** 2).sum(0)
    return jnp.mean(1.0 - residual / total)


def control_labels(token_ids, labels, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang 2019's control task: every token type gets one label drawn from
    the empirical distribution of `labels`, and each example takes its token's label.
    `token_ids [n]` (the token each example's activation sits on), `labels [n]`."""
    token_ids, labels = np.asarray(token_ids), np.asarray(labels)
    if token_ids.shape != labels.shape or token_ids.ndim != 1:
        raise ValueError(
            f"token_ids {token_ids.shape} and labels {labels.shape} must both be [n]: the "
            "token under each example's activation and its label"
        )
    types, inverse = np.unique(token_ids, return_inverse=True)
    values, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    per_type = rng.choice(values, size=len(types), p=counts / counts.sum())
    return per_type[inverse]


def probe(
    acts,
    labels,
    *,
    kind: str = "logistic",
    n_classes: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    alpha: float = 1.0,
    C: float = 1.0,
    steps: int = 200,
    control=None,
) -> ProbeResult:
    """Fit one probe per leading index of `acts [..., example, d]` (e.g. captured
    `resid_post` rearranged to `[layer, example, d_model]`) in one vmapped, compiled call.

    labels: `[example]` integer classes (kind "logistic") or `[example]` / `[example, t]`
    real targets (kind "ridge"); per-token labels are per-example labels of token-level
    activations. A random `test_fraction` of the examples (fixed by `seed`) is held out.
    control: control-task labels `[example]` (e.g. `control_labels(...)`) for a logistic
    probe's selectivity. alpha: ridge penalty; C, steps: the logistic fit's.
    """
    acts = jnp.asarray(acts, jnp.float32)
    labels = np.asarray(labels)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {KINDS}")
    if acts.ndim < 2 or acts.shape[-2] != labels.shape[0]:
        raise ValueError(
            f"acts {tuple(acts.shape)} must be [..., example, d] with one example per label "
            f"({labels.shape[0]} labels)"
        )
    n = labels.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n - 1:
        raise ValueError(f"test_fraction={test_fraction} leaves no train or no test examples")
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    lead = acts.shape[:-2]
    flat = acts.reshape(-1, n, acts.shape[-1])
    if kind == "ridge":
        W, b, train_s, test_s = _ridge_sweep(
            flat, jnp.asarray(labels, jnp.float32), train, test, alpha
        )
        control_s = None
    else:
        classes = _check_classes(labels, n_classes)
        fit = functools.partial(
            _logistic_sweep, train=train, test=test, n_classes=classes, C=C, steps=steps
        )
        W, b, train_s, test_s = fit(flat, jnp.asarray(labels, jnp.int32))
        control_s = None
        if control is not None:
            control = np.asarray(control)
            if control.shape != labels.shape:
                raise ValueError(f"control labels {control.shape} must match labels {labels.shape}")
            _check_classes(control, classes)
            control_s = fit(flat, jnp.asarray(control, jnp.int32))[3]
    shape = lambda a: np.asarray(a).reshape(tuple(lead) + np.shape(a)[1:])  # noqa: E731
    return ProbeResult(
        kind, shape(W), shape(b), shape(train_s), shape(test_s),
        None if control_s is None else shape(control_s),
    )  # fmt: skip


def _check_classes(labels: np.ndarray, n_classes: int | None) -> int:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"a logistic probe needs integer class labels [example], got {labels.dtype} {labels.shape}"
        )
    k = int(labels.max() + 1) if n_classes is None else int(n_classes)
    if labels.min() < 0 or labels.max() >= k or k < 2:
        raise ValueError(f"labels must lie in [0, n_classes={k}) with at least 2 classes")
    return k


@functools.partial(jax.jit, static_argnames=("train", "test", "alpha"))
def _ridge_sweep_jit(flat, y, train, test, alpha):
    train, test = np.asarray(train), np.asarray(test)

    def one(x):
        W, b = fit_ridge(x[train], y[train], alpha)
        return W, b, r2_score(y[train], x[train] @ W + b), r2_score(y[test], x[test] @ W + b)

    return jax.vmap(one)(flat)


def _ridge_sweep(flat, y, train, test, alpha):
    return _ridge_sweep_jit(flat, y, tuple(train.tolist()), tuple(test.tolist()), float(alpha))


def _logistic_sweep(flat, labels, *, train, test, n_classes, C, steps):
    return _logistic_sweep_jit(
        flat, labels, tuple(train.tolist()), tuple(test.tolist()), n_classes, float(C), int(steps)
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _logistic_sweep_jit(flat, labels, train, test, n_classes, C, steps):
    train, test = np.asarray(train), np.asarray(test)

    def one(x):
        W, b = fit_logistic(x[train], labels[train], n_classes, C, steps)

        def accuracy(rows):
            return jnp.mean(jnp.argmax(x[rows] @ W + b, -1) == labels[rows])

        return W, b, accuracy(train), accuracy(test)

    return jax.vmap(one)(flat)


def site_activations(params, cfg, tokens, site: str, *, pos: int | None = None):
    """Activations at a per-layer `site` arranged for `probe`: `[layer, example, d]`,
    one example per token (`pos=None`: every position of every sequence, for per-token
    labels flattened the same way, `labels.reshape(-1)`) or per sequence (`pos`: that
    position of each sequence, e.g. -1 for the last)."""
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    if site not in available_sites(cfg) or not SITES[site][0]:
        raise ValueError(
            f"site {site!r} is not a per-layer site of this model; its sites are "
            f"{[s for s in available_sites(cfg) if SITES[s][0]]}"
        )
    acts = run(params, tokens, cfg, capture=(site,))[1][site]  # [layer, batch, pos, ...]
    if pos is not None:
        return acts[:, :, pos].reshape(cfg.n_layers, tokens.shape[0], -1)
    return acts.reshape(cfg.n_layers, tokens.shape[0] * tokens.shape[1], -1)
