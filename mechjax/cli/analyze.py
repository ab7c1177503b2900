"""`mechjax analyze RUN_OR_CHECKPOINT [--out DIR]`: draw a trained model's circuits.

Accepts, and tells apart by their files:

* a run directory written by `mechjax train` (its `final_model/`);
* a model directory (`config.json`, `manifest.json`, `params/`; `mechjax.io.load_model`);
* a training checkpoint `RUN/checkpoints/step_XXXXXXXX` (`config.json`, `state/`;
  `mechjax.io.run_checkpoints.load_checkpoint_params`; the first model of a multi-seed state);
* a HuggingFace folder (`config.json` and `*.safetensors`; `mechjax.io.load_hf`).

Token ids are decoded with the run's tokenizer when it can be told: the byte tokenizer
for 258-token vocabularies (BOS 256), the synthetic tasks' "last id is BOS" otherwise,
`bos_token_id` and `tokenizer.json` of a HuggingFace folder; `--bos-id` overrides. For
byte models the random sequences and the skip-trigram table use text bytes only
(printable ASCII, tab, newline): the other bytes are rare or absent in text, so their
embeddings stay near initialisation and would fill the tables with noise
(`--all-tokens` keeps them).
The output (default `<input>/analysis`) is written by `mechjax.views.analysis_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..io.runs import CHECKPOINTS_DIR, FINAL_MODEL_DIR

SYNTHETIC_DATA = ("repeated", "trigger-bigrams", "markov")  # BOS = vocab_size - 1


@dataclasses.dataclass
class LoadedModel:
    """A model found at a path, with what is known about its tokens."""

    params: dict
    cfg: object  # ModelConfig
    kind: str  # "run", "model", "checkpoint" or "hf"
    description: str
    token_str: Callable[[int], str]
    bos_id: int | None
    exclude: tuple[int, ...]  # ids left out of the analysis: specials (and non-text bytes)
    specials: tuple[int, ...] = ()  # BOS / padding only


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="draw a model's circuits: head table, OV/QK, composition, skip-trigrams",
        description=(
            "Analyse a trained model's attention circuits: head detectors, eigenvalue "
            "copying scores, composition scores, attention patterns, skip-trigrams (1-layer "
            "attention-only) and the path decomposition (2-layer attention-only). Writes "
            "PNG figures, analysis.json and a self-contained analysis.html. RUN_OR_CHECKPOINT "
            "is a run directory, a saved model directory, a training checkpoint "
            "(RUN/checkpoints/step_XXXXXXXX) or a HuggingFace model folder."
        ),
    )
    parser.add_argument("model", metavar="RUN_OR_CHECKPOINT", type=Path)
    parser.add_argument(
        "--out", type=Path, help="output directory (default <input>/analysis); files mechjax "
        "did not write are never replaced"
    )  # fmt: skip
    parser.add_argument(
        "--bos-id", type=int, help="BOS token id put before the repeated sequences "
        "(default: taken from the run's data or the HuggingFace config)"
    )  # fmt: skip
    parser.add_argument(
        "--all-tokens", action="store_true", help="byte models: use every byte, not only "
        "text bytes, in the random sequences and tables"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sequences")
    parser.add_argument("--batch", type=int, default=8, help="sequences for the head scores")
    parser.add_argument(
        "--mesh", metavar="AXIS=SIZE,...", help="spread the model over several devices, "
        "e.g. model=4 (heads, neurons and vocabulary split) or data=2,model=2"
    )  # fmt: skip
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    from ..distributed import make_mesh
    from ..model.sharding import shard_params, use_mesh

    mesh = make_mesh(args.mesh) if args.mesh else None  # a bad mesh fails before loading
    loaded = load_any(args.model)
    bos_id = loaded.bos_id if args.bos_id is None else args.bos_id
    exclude = loaded.specials if args.all_tokens else loaded.exclude
    out = args.out or args.model / "analysis"
    params = loaded.params if mesh is None else shard_params(loaded.params, mesh)
    with use_mesh(mesh):
        page = write_analysis(
            params,
            loaded.cfg,
            out,
            token_str=loaded.token_str,
            bos_id=bos_id,
            exclude=exclude,
            source=loaded.description,
            seed=args.seed,
            batch=args.batch,
        )
    print(page)
    return 0


def write_analysis(params, cfg, out_dir, *, token_str=None, source: str = "", **options) -> Path:
    """Analyse a model and write the report: refuse a directory holding files mechjax
    did not write, then compute (`activations.model_analysis.analyze_model(params, cfg,
    **options)`), then draw and write (`views.analysis_report`). Returns the page."""
    from ..activations.model_analysis import analyze_model
    from ..views.analysis_report import check_report_dir, write_analysis_report

    check_report_dir(out_dir, cfg)  # nothing is computed for a refused directory
    analysis = analyze_model(params, cfg, **options)
    return write_analysis_report(analysis, out_dir, token_str=token_str, source=source)


# -- finding the model ---------------------------------------------------------------------------


def _is_model_dir(path: Path) -> bool:
    return all((path / n).exists() for n in ("config.json", "manifest.json", "params"))


def _is_train_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "state").is_dir()


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def load_any(path) -> LoadedModel:
    """Load whatever model `path` holds (see the module docstring). Raises
    FileNotFoundError / ValueError naming the problem and what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a run directory, a saved model directory, a "
            "training checkpoint (RUN/checkpoints/step_XXXXXXXX) or a HuggingFace model folder"
        )
    if not path.is_dir():
        raise ValueError(
            f"{path} is a file; pass the directory that holds the model (a run directory, "
            "model directory, training checkpoint or HuggingFace folder)"
        )
    if _is_model_dir(path):
        from ..io import load_model

        params, cfg = load_model(path)
        return _with_tokens(params, cfg, "model", f"model directory {path}", _run_dir_of(path))
    if _is_train_checkpoint(path):
        from ..io.run_checkpoints import load_checkpoint_params

        params, cfg, _ = load_checkpoint_params(path, model=0)  # model 0 of a multi-seed stack
        run_dir = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None
        return _with_tokens(params, cfg, "checkpoint", f"training checkpoint {path}", run_dir)
    if _is_model_dir(path / FINAL_MODEL_DIR):
        from ..io import load_model

        params, cfg = load_model(path / FINAL_MODEL_DIR)
        return _with_tokens(params, cfg, "run", f"run {path} (final_model/)", path)
    if _is_hf_folder(path):
        return _load_hf(path)
    raise ValueError(f"{path} is not a model: {_what_instead(path)}")


def _what_instead(path: Path) -> str:
    seeds = sorted(p.name for p in path.glob("seed_*") if _is_model_dir(p / "final_model"))
    if seeds:
        return f"it is a multi-seed run; analyse one seed, e.g. `mechjax analyze {path / seeds[0]}`"
    steps = sorted(p for p in (path / "checkpoints").glob("step_*") if _is_train_checkpoint(p))
    if steps:
        return (
            "the run has no final_model/ (not finished?); analyse a training checkpoint, "
            f"e.g. `mechjax analyze {steps[-1]}`"
        )
    return (
        "expected a run directory with final_model/, a model directory (config.json, "
        "manifest.json, params/), a training checkpoint (config.json, state/) or a "
        "HuggingFace folder (config.json, *.safetensors)"
    )


def _run_dir_of(model_dir: Path) -> Path | None:
    parent = model_dir.parent
    return parent if (parent / "config.json").is_file() else None


def _with_tokens(params, cfg, kind: str, description: str, run_dir: Path | None) -> LoadedModel:
    """Attach the tokenizer facts the run directory's config.json tells (if any)."""
    data_name = None
    if run_dir is not None and (run_dir / "config.json").is_file():
        try:
            data_name = (json.loads((run_dir / "config.json").read_text()).get("data") or {}).get(
                "name"
            )
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            data_name = None
    from ..data import ByteTokenizer

    if data_name in SYNTHETIC_DATA:
        bos = cfg.d_vocab - 1
        token_str = _synthetic_token_str(bos)
        return LoadedModel(params, cfg, kind, description, token_str, bos, (bos,), (bos,))
    if cfg.d_vocab == ByteTokenizer.vocab_size:
        tok = ByteTokenizer()
        specials = (tok.bos_id, tok.pad_id)
        not_text = tuple(i for i in range(256) if not (32 <= i < 127 or i in (9, 10)))
        return LoadedModel(
            params, cfg, kind, description, tok.token_str, tok.bos_id, specials + not_text, specials
        )
    return LoadedModel(params, cfg, kind, description, str, None, ())


def _synthetic_token_str(bos: int) -> Callable[[int], str]:
    return lambda i: "<bos>" if int(i) == bos else str(int(i))


def _load_hf(path: Path) -> LoadedModel:
    from ..io import load_hf

    params, cfg = load_hf(path)
    raw = json.loads((path / "config.json").read_text())
    bos = (raw.get("text_config") or raw).get("bos_token_id", raw.get("bos_token_id"))
    bos = bos if isinstance(bos, int) and 0 <= bos < cfg.d_vocab else None
    token_str: Callable[[int], str] = str
    if (path / "tokenizer.json").is_file():
        try:  # optional: readable tokens when the `tokenizers` library is installed
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            token_str = lambda i: tokenizer.id_to_token(int(i)) or str(int(i))  # noqa: E731
        except Exception:  # any failure only costs readable labels
            token_str = str
    exclude = (bos,) if bos is not None else ()
    description = f"HuggingFace folder {path}"
    return LoadedModel(params, cfg, "hf", description, token_str, bos, exclude, exclude)
