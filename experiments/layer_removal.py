"""Layer removal (seed 000): take each block out of a model in turn and measure its
single-digit arithmetic accuracy, per operation; and draw how the answer position's
residual stream evolves through the layers.

The source ("Looking Inside Gemma", on Gemma 2 2B) builds 26 backbones that each lack
one decoder layer and runs 1000 prompts `a+b=`, `a-b=`, `a*b=`, `a/b=` through each,
scoring the greedy next token. Here a block is removed by zero-ablating its attention
and MLP writes (`mechjax.causal.ablation`, component "layer", method "zero"), which makes
`resid_post == resid_pre`: exactly the model without that block (checked below against
a backbone assembled without it). Prompts are the 184 problems of
`mechjax.data.arithmetic` (every single-digit problem with a single-digit answer).

    python experiments/layer_removal.py                      train toy_models/gemma-arith, study it
    python experiments/layer_removal.py --checkpoint RUN/final_model
    python experiments/layer_removal.py --hf PATH/gemma-2-2b

With `--hf`, the prompts are tokenized by the folder's own `tokenizer.json`
(`mechjax.data.load_tokenizer`; Gemma's splits digits, so the answer digit is one
token), half of them behind a one-shot prefix of a solved problem: a ragged batch,
left-padded with a mask. `experiments/random_checkpoint.py` makes a real-size Gemma 2
2B folder with random weights and a digit-splitting tokenizer to run it on.

Outputs: a table on stdout and in `experiments/results/layer_removal.json`; figures
`experiments/figures/layer_removal_accuracy.png` (accuracy by removed layer) and
`experiments/figures/layer_removal_embedding_evolution.png` (the last position's
residual before each layer and at the end, PCA to 2-D, one panel per layer).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import mechjax as mj
from mechjax.causal.ablation import ablation_edits
from mechjax.data.arithmetic import (
    OPERATIONS,
    Arithmetic,
    accuracy_by_operation,
    all_problems,
)
from mechjax.io import load_hf, load_model
from mechjax.model.transformer import run, run_from
from mechjax.model.unembed import output_head

HERE = Path(__file__).resolve().parent
PRESET = "gemma-arith"
COLUMNS = (*OPERATIONS, "overall")
OP_COLORS = {"+": "tab:blue", "-": "tab:orange", "*": "tab:green", "/": "tab:red"}
OP_MARKERS = {"+": "o", "-": "s", "*": "^", "/": "D"}


# -- models and prompts -----------------------------------------------------------------------


def train_toy(run_dir: Path, steps: int | None, seed: int):
    """Train the `gemma-arith` preset into `run_dir` (or reuse its finished model)."""
    from mechjax.train import build_from_spec, train
    from mechjax.views.progress import ProgressBar
    from toy_models import load_preset

    spec = load_preset(PRESET)
    if steps:
        spec["train"]["steps"] = steps
    spec["train"]["seeds"] = [seed]
    model_cfg, train_cfg, dataset = build_from_spec(spec)
    final = run_dir / "final_model"
    if final.is_dir():
        print(f"using the model already trained in {final}")
    else:
        print(f"training {PRESET} into {run_dir}: {dataset.describe()}", flush=True)
        t0 = time.time()
        with ProgressBar() as bar:
            train(
                model_cfg, train_cfg, dataset, run_dir, on_step=bar if sys.stderr.isatty() else None
            )
        print(f"trained {train_cfg.steps} steps in {time.time() - t0:.0f} s", flush=True)
    params, cfg = load_model(final)
    return params, cfg, dataset


def byte_prompts(dataset: Arithmetic, split: str):
    """(tokens [n, 5], answers [n], problems) of the byte-level dataset's `split`."""
    tokens, answers = dataset.prompts(split)
    return tokens, answers, dataset.problems(split)


def hf_prompts(folder: str, problems, shots=(0, 1)):
    """(tokens [n, pos], answers [n], problems, mask [n, pos]) for a HuggingFace folder,
    tokenized by the folder's own `tokenizer.json` (`mechjax.data.load_tokenizer`).

    Problem i follows a few-shot prefix of `shots[i % len(shots)]` other solved problems
    ("3+4=7\n"), so prompts differ in length: the batch is left-padded, every prompt's
    answer is read at the last column, and the mask keeps padding out of attention."""
    from mechjax.data import load_tokenizer

    tokenizer = load_tokenizer(folder)
    texts = []
    for i, problem in enumerate(problems):
        solved = [
            problems[(i + 37 * (j + 1)) % len(problems)] for j in range(shots[i % len(shots)])
        ]
        prefix = "".join(f"{s.prompt}{s.answer}\n" for s in solved)
        texts.append(prefix + problem.prompt)
    tokens, mask = tokenizer.to_tokens(
        texts, prepend_bos=True, padding_side="left", return_mask=True
    )
    answers = np.array([tokenizer.to_single_token(str(p.answer)) for p in problems], np.int32)
    return tokens, answers, tuple(problems), mask


# -- measurements -----------------------------------------------------------------------------


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def removal_study(params, cfg, tokens, answers, problems, batch_size: int = 64, mask=None) -> dict:
    """Accuracy per operation with no block removed and with each block removed.

    Every prompt's answer is read at the last column (prompts of different lengths are
    left-padded, `mask` False at padding). Removing block l leaves blocks 0 .. l - 1 as
    they were, so each removal runs from the unedited run's `resid_pre` at block l
    (`run_from`), and only the last column is unembedded (`readout`): about half of the
    work of 26 full forward passes.

    Returns {"baseline": {op: acc, "overall": acc}, "removed": [{...}] (one per layer),
    "correct": {"baseline": [n] bool, "L0": ..., ...}}."""
    if mask is not None and not np.asarray(mask)[:, -1].all():
        raise ValueError("removal_study reads the last column: pad the prompts on the left")
    last = (tokens.shape[1] - 1,)
    predicted = {"baseline": []} | {f"L{layer}": [] for layer in range(cfg.n_layers)}
    for rows in _chunks(len(tokens), batch_size):
        batch = jnp.asarray(tokens[rows])
        batch_mask = None if mask is None else jnp.asarray(mask[rows])
        logits, acts = run(
            params, batch, cfg, capture=("resid_pre",), readout=last, mask=batch_mask
        )
        predicted["baseline"].append(np.asarray(logits[:, -1].argmax(-1)))
        for layer in range(cfg.n_layers):
            edits = ablation_edits(cfg, "layer", layer, method="zero")
            logits, _ = run_from(
                params,
                acts["resid_pre"][layer],
                cfg,
                layer=layer,
                edits=tuple(edits),
                readout=last,
                mask=batch_mask,
            )
            predicted[f"L{layer}"].append(np.asarray(logits[:, -1].argmax(-1)))
    correct = {name: np.concatenate(parts) == answers for name, parts in predicted.items()}
    removed = [
        {
            "layer": layer,
            "layer_type": cfg.resolved_layer_types[layer],
            "accuracy": accuracy_by_operation(correct[f"L{layer}"], problems),
        }
        for layer in range(cfg.n_layers)
    ]
    return {
        "baseline": accuracy_by_operation(correct["baseline"], problems),
        "removed": removed,
        "correct": correct,
    }


def backbone_without(params, cfg, layer: int):
    """The source's way to remove a layer: a model assembled from every other block."""
    blocks = {k: jnp.delete(v, layer, axis=0) for k, v in params["blocks"].items()}
    types = tuple(t for i, t in enumerate(cfg.resolved_layer_types) if i != layer)
    layer_types = types if cfg.layer_types is not None else None
    return {**params, "blocks": blocks}, cfg.replace(
        n_layers=cfg.n_layers - 1, layer_types=layer_types
    )


def removal_matches_backbone(params, cfg, tokens, layer: int = 0) -> float:
    """max |logit difference| between ablating block `layer` and deleting it."""
    edits = ablation_edits(cfg, "layer", layer, method="zero")
    ablated = mj.forward(params, tokens, cfg, edits=edits)
    short_params, short_cfg = backbone_without(params, cfg, layer)
    return float(jnp.abs(ablated - mj.forward(short_params, tokens, short_cfg)).max())


def answer_states(params, cfg, tokens, batch_size: int = 64, mask=None) -> np.ndarray:
    """The last position's residual stream before each block and after the last one
    (before the final norm): [layer + 1, n, d_model] float32 (left padding: `mask`)."""
    names = ("final_resid", "resid_pre")
    parts = []
    for s in _chunks(len(tokens), batch_size):
        batch_mask = None if mask is None else jnp.asarray(mask[s])
        _, acts = run(params, jnp.asarray(tokens[s]), cfg, capture=names, mask=batch_mask)
        states = jnp.concatenate([acts["resid_pre"][:, :, -1], acts["final_resid"][None, :, -1]])
        parts.append(np.asarray(states, np.float32))
    return np.concatenate(parts, axis=1)


def lens_accuracy(params, cfg, states, answers) -> np.ndarray:
    """Logit-lens accuracy of each state [layer + 1]: the model's own output head
    (final norm, unembedding, soft-cap) applied to that residual."""
    # one state at a time: all of them at once are [layer + 1, n, vocab] logits (5 GiB
    # for Gemma 2 2B's 256k-token vocabulary)
    accuracy = []
    for state in states:
        logits = output_head(params, cfg, jnp.asarray(state, jnp.dtype(cfg.dtype)))
        accuracy.append(float((np.asarray(logits.argmax(-1)) == answers).mean()))
    return np.asarray(accuracy)


def variance_explained_by_answer(states, digits) -> np.ndarray:
    """eta^2 per state [layer + 1]: between-digit sum of squares / total sum of squares
    of the residual vectors (in the full d_model space; 0 when all vectors coincide)."""
    x = np.asarray(states, np.float64)
    centered = x - x.mean(axis=1, keepdims=True)
    total = (centered**2).sum(axis=(1, 2))
    between = np.zeros_like(total)
    for d in np.unique(digits):
        group = centered[:, digits == d]
        between += group.shape[1] * (group.mean(axis=1) ** 2).sum(-1)
    varies = total > 1e-12 * np.maximum(1.0, (x**2).sum(axis=(1, 2)))
    return np.where(varies, between / np.where(varies, total, 1.0), 0.0)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [n, 2], explained-variance ratios [2]) of `x [n, d]` on its own top-2
    principal components (centered SVD); zeros when x has no variance."""
    x = np.asarray(x, np.float64)  # a float32 mean would leave rounding noise as "variance"
    centered = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    total = (s**2).sum()
    if total <= 1e-12 * max(1.0, float((x**2).sum())):
        return np.zeros((len(x), 2)), np.zeros(2)
    k = min(2, len(s))
    coords = np.zeros((len(x), 2))
    coords[:, :k] = centered @ vt[:k].T
    ratios = np.zeros(2)
    ratios[:k] = s[:k] ** 2 / total
    return coords, ratios


# -- figures and table ------------------------------------------------------------------------


def plot_accuracy(study: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    layers = [r["layer"] for r in study["removed"]]
    for op in OPERATIONS:
        ys = [r["accuracy"][op] for r in study["removed"]]
        ax.plot(layers, ys, marker=OP_MARKERS[op], color=OP_COLORS[op], label=f"a{op}b", lw=1.2)
        ax.axhline(study["baseline"][op], color=OP_COLORS[op], ls="--", lw=0.8, alpha=0.5)
    ys = [r["accuracy"]["overall"] for r in study["removed"]]
    ax.plot(layers, ys, marker="o", color="black", lw=2.2, label="overall")
    ax.axhline(
        study["baseline"]["overall"], color="black", ls="--", lw=1.2, label="no layer removed"
    )
    ax.axhline(0.1, color="grey", ls=":", lw=1.0, label="chance (1 in 10 digits)")
    ax.set_xticks(layers)
    ax.set_xticklabels(
        [f"{r['layer']}\n{r['layer_type'][0].upper()}" for r in study["removed"]], fontsize=8
    )
    ax.set_xlabel("removed layer (L = local / G = global attention)")
    ax.set_ylabel("accuracy (greedy answer digit)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    fig.savefig(path, dpi=120)


def plot_evolution(states, problems, lens_acc, eta2, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    n_states = states.shape[0]
    cols = min(4, n_states)
    rows = -(-n_states // cols)
    fig = Figure(figsize=(3.1 * cols, 3.0 * rows + 0.6), layout="constrained")
    digits = np.array([p.answer for p in problems])
    ops = np.array([p.op for p in problems])
    cmap = _digit_colors()
    for i in range(n_states):
        ax = fig.add_subplot(rows, cols, i + 1)
        coords, ratios = pca_2d(states[i])
        for op in OPERATIONS:
            m = ops == op
            ax.scatter(
                coords[m, 0],
                coords[m, 1],
                c=[cmap[d] for d in digits[m]],
                marker=OP_MARKERS[op],
                s=14,
                linewidths=0,
            )
        name = f"before layer {i}" if i < n_states - 1 else "final (before norm)"
        if i == 0:
            name = "input (embedding)"
        extra = (
            "identical for all prompts"
            if ratios.sum() == 0
            else (f"PC1 {ratios[0]:.0%}, PC2 {ratios[1]:.0%}")
        )
        ax.set_title(
            f"{name}\nlens acc {lens_acc[i]:.2f}, $\\eta^2$ {eta2[i]:.2f}; {extra}", fontsize=8
        )
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=cmap[d], label=str(d)) for d in range(10)
    ] + [
        Line2D([], [], ls="", marker=OP_MARKERS[op], color="grey", label=f"a{op}b")
        for op in OPERATIONS
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=14,
        fontsize=8,
        title="colour: correct answer digit; marker: operation",
        title_fontsize=8,
    )
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)


def _digit_colors():
    from matplotlib import colormaps

    return [colormaps["tab10"](d) for d in range(10)]


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for the results file)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def markdown_table(study: dict) -> str:
    head = "| layer removed | " + " | ".join(COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)

    def row(label, acc):
        return f"| {label} | " + " | ".join(f"{acc[c]:.2f}" for c in COLUMNS) + " |"

    lines = [head, rule, row("none (baseline)", study["baseline"])]
    for r in study["removed"]:
        lines.append(row(f"{r['layer']} ({r['layer_type']})", r["accuracy"]))
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="a mechjax model dir (RUN/final_model)")
    source.add_argument("--hf", type=Path, help="a HuggingFace Gemma folder")
    parser.add_argument("--tokenizer", help="tokenizer folder for --hf (default: the --hf folder)")
    parser.add_argument("--dtype", default="float32", help="--hf weights dtype")
    parser.add_argument(
        "--run",
        type=Path,
        default=Path("runs/layer_removal"),
        help="where to train the toy (a finished run there is reused)",
    )
    parser.add_argument("--steps", type=int, help="override the preset's training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        default="all",
        choices=("all", "train", "test"),
        help="problems to evaluate a byte-level model on (default all)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "layer_removal.json")
    args = parser.parse_args(argv)

    mask = None
    if args.hf:
        t0 = time.time()
        params, cfg = load_hf(args.hf, dtype=args.dtype)
        print(f"loaded {args.hf} in {time.time() - t0:.1f} s", flush=True)
        tokens, answers, problems, mask = hf_prompts(args.tokenizer or str(args.hf), all_problems())
        lengths = mask.sum(1)
        origin, split = f"HuggingFace checkpoint {args.hf}", "all"
        print(f"prompts: {lengths.min()}..{lengths.max()} tokens, left-padded to {tokens.shape[1]}")
    else:
        if args.checkpoint:
            params, cfg = load_model(args.checkpoint)
            dataset, origin = Arithmetic(), f"checkpoint {args.checkpoint}"
        else:
            params, cfg, dataset = train_toy(args.run, args.steps, args.seed)
            origin = f"trained here ({PRESET}, run {args.run})"
        tokens, answers, problems = byte_prompts(dataset, args.split)
        split = args.split
    print(
        f"model: {cfg.name or 'unnamed'} ({cfg.n_layers} layers, {mj.count_params(params):,} "
        f"parameters), {origin}; {len(problems)} prompts (split {split!r})",
        flush=True,
    )

    check = None
    if mj.count_params(params) < 50_000_000:  # deleting a block copies the weights
        check = removal_matches_backbone(params, cfg, tokens[: args.batch_size], layer=0)
        print(f"removing block 0 by ablation vs a backbone without it: max |dlogit| = {check:.2e}")

    t0 = time.time()
    study = removal_study(params, cfg, tokens, answers, problems, args.batch_size, mask)
    study_seconds = time.time() - t0
    print(f"removal study: {study_seconds:.0f} s", flush=True)
    table = markdown_table(study)
    print(table)

    states = answer_states(params, cfg, tokens, args.batch_size, mask)
    lens_acc = lens_accuracy(params, cfg, states, answers)
    digits = np.array([p.answer for p in problems])
    eta2 = variance_explained_by_answer(states, digits)
    print("logit-lens accuracy before each layer and at the end:", np.round(lens_acc, 2).tolist())
    print("share of variance explained by the answer digit:", np.round(eta2, 2).tolist())

    args.figures.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    label = f"{cfg.name or 'model'}: {len(problems)} single-digit problems"
    acc_path = args.figures / "layer_removal_accuracy.png"
    evo_path = args.figures / "layer_removal_embedding_evolution.png"
    plot_accuracy(study, acc_path, f"Accuracy with one layer removed ({label})")
    plot_evolution(
        states,
        problems,
        lens_acc,
        eta2,
        evo_path,
        f"Last position's residual stream, layer by layer ({label}); PCA fitted per panel",
    )
    result = {
        "model": cfg.to_dict(),
        "origin": origin,
        "split": split,
        "n_prompts": len(problems),
        "problems": [p.prompt + str(p.answer) for p in problems],
        "removal_method": "zero ablation of attn_out and mlp_out (mechjax.causal.ablation, 'layer')",
        "ablation_vs_backbone_max_abs_logit_diff": check,
        "baseline": study["baseline"],
        "removed": study["removed"],
        "lens_accuracy": [float(x) for x in lens_acc],
        "answer_variance_share": [float(x) for x in eta2],
        "correct": {k: "".join("1" if c else "0" for c in v) for k, v in study["correct"].items()},
        "study_seconds": round(study_seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "figures": [_shown(acc_path), _shown(evo_path)],
    }
    args.results.write_text(json.dumps(result, indent=2))
    print(f"wrote {_shown(args.results)}, {_shown(acc_path)}, {_shown(evo_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
