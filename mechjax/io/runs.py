"""Reading a training run directory.

`mechjax train` writes a run directory; `load_run(path)` reads it back into a `Run`:

```
run_dir/
  config.json          {"model": ModelConfig.to_dict(), "train": {...}, "data": {...},
                        "mechjax_version": str}                            (optional here)
  metrics.jsonl        one JSON object per evaluation, "step" in every one   (required)
  per_token_loss.npz   "steps" [snapshot], "losses" [snapshot, example],
                       "example_index" [example], "token_index" [example]   (optional)
  final_pattern.npz    "pattern" [query_pos, key_pos], "tokens" [query_pos],
                       "layer", "head", "seg_len"                            (optional)
  summary.json         written by `mechjax.views.run_report.write_summary`
  checkpoints/         orbax checkpoints (not read here)
```

Metrics become numpy arrays with a leading `eval` axis, one entry per evaluation,
sorted by step (see `load_metrics` for the exact rules). Readers of a run should accept
missing optional keys: `run.metrics.get("copying")` is `None` when the run never
recorded copying scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PER_TOKEN_LOSS_FILE = "per_token_loss.npz"
FINAL_PATTERN_FILE = "final_pattern.npz"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_MODEL_DIR = "final_model"

# per-head score matrices recorded at every evaluation: [layer, head]
HEAD_SCORES = ("induction", "prefix_matching", "previous_token", "copying")


@dataclasses.dataclass(frozen=True)
class PerTokenLoss:
    """Per-token losses of N fixed evaluation examples, one fixed token index each.

    `steps [snapshot]`, `losses [snapshot, example]` (nats), `example_index [example]`,
    `token_index [example]`: the input to per-token-loss PCA (`mechjax.dynamics.pca`).
    """

    steps: np.ndarray
    losses: np.ndarray
    example_index: np.ndarray | None = None
    token_index: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class FinalPattern:
    """Attention pattern `[query_pos, key_pos]` of the best induction head on a repeated
    random sequence `tokens [query_pos]` whose repeated segment has length `seg_len`."""

    pattern: np.ndarray
    tokens: np.ndarray | None
    layer: int
    head: int
    seg_len: int | None


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory, read.

    `metrics[name]` has a leading `eval` axis (see `load_metrics`); e.g.
    `metrics["step"] [eval]`, `metrics["induction"] [eval, layer, head]`,
    `metrics["loss_by_pos"] [eval, token_index - 1]`, `metrics["best_induction.score"] [eval]`.
    """

    path: Path
    config: dict
    metrics: dict[str, np.ndarray]
    per_token_loss: PerTokenLoss | None
    final_pattern: FinalPattern | None
    label: str = ""  # name in figure legends; default: the directory name

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.path.name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> np.ndarray:
        """`[eval]` training step of each evaluation (int64)."""
        return self.metrics["step"].astype(np.int64)

    @property
    def n_evals(self) -> int:
        return len(self.metrics["step"])

    def series(self, name: str) -> np.ndarray | None:
        """`metrics[name]`, or `None` when the run did not record it."""
        return self.metrics.get(name)

    def final(self, name: str, default: Any = None) -> Any:
        """Value of `name` at the last evaluation where it is finite (numbers) or present."""
        values = self.metrics.get(name)
        if values is None:
            return default
        for value in values[::-1]:
            if _present(value):
                return value.item() if isinstance(value, np.generic) else value
        return default

    def best_induction_score(self) -> np.ndarray | None:
        """`[eval]` best induction score per evaluation: `best_induction.score` when the
        run recorded it, else the maximum of `induction [eval, layer, head]`; `None` when
        the run has neither (e.g. a 0-layer model)."""
        recorded = self.metrics.get("best_induction.score")
        if recorded is not None and np.isfinite(recorded).any():
            return recorded
        scores = self.metrics.get("induction")
        if scores is None or scores.ndim != 3 or scores[0].size == 0:
            return None
        flat = scores.reshape(len(scores), -1)
        with warnings.catch_warnings():  # all-NaN rows (evaluations without scores)
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(flat, axis=1)


def _present(value) -> bool:
    if isinstance(value, (float, np.floating)):
        return bool(np.isfinite(value))
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).any()) if value.dtype.kind == "f" else value.size > 0
    return value is not None and value != ""


def find_runs(path: str | Path) -> list[Path]:
    """The run directories at `path`: `[path]` when it holds metrics.jsonl, else its
    sub-directories that do, sorted (a multi-seed run keeps one run per `seed_<s>/`).

    Raises `FileNotFoundError` / `ValueError` (as `load_run`) when there is none.
    """
    path = Path(path)
    _check_dir(path)
    if (path / METRICS_FILE).exists():
        return [path]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and (p / METRICS_FILE).exists())
    if not runs:
        raise FileNotFoundError(
            f"{str(path)!r} is not a run directory: it has no {METRICS_FILE} (nor do its "
            "sub-directories); pass the directory `mechjax train` wrote, or wait for its "
            "first evaluation"
        )
    return runs


def load_run(path: str | Path) -> Run:
    """Read the run directory at `path`.

    Raises `FileNotFoundError` when `path` or its `metrics.jsonl` does not exist, and
    `ValueError` naming the file when a file is corrupted or `metrics.jsonl` is empty.
    """
    path = Path(path)
    _check_dir(path)
    if not (path / METRICS_FILE).exists():
        runs = find_runs(path)  # raises when there are none
        names = ", ".join(p.name for p in runs)
        raise FileNotFoundError(
            f"{str(path)!r} holds several runs ({names}), not one; pass one of them, "
            f"e.g. {str(runs[0])!r}, or compare them with `mechjax compare {path}/* --out DIR`"
        )
    return Run(
        path=path,
        config=_load_config(path / CONFIG_FILE),
        metrics=load_metrics(path / METRICS_FILE),
        per_token_loss=_load_per_token_loss(path / PER_TOKEN_LOSS_FILE),
        final_pattern=_load_final_pattern(path / FINAL_PATTERN_FILE),
    )


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"run directory {str(path)!r} does not exist; pass the directory that "
            f"`mechjax train` wrote (it holds {METRICS_FILE})"
        )
    if not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a file, not a run directory; pass the directory that "
            f"holds {METRICS_FILE} and {CONFIG_FILE}"
        )


def _load_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore or rewrite it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl file, in file order.

    A last line without its newline that does not parse is a write in progress (a run
    still training): it is skipped with a warning. Any other bad line is a `ValueError`
    naming the file and line.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{path}: skipped an unfinished last line (a run still writing?)",
                    stacklevel=2,
                )
                continue
            raise ValueError(
                f"{path} line {number} is not valid JSON ({err.msg}); the metrics file is "
                "corrupted: delete or repair that line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path} line {number} is a JSON {type(record).__name__}, not an object; "
                "each line must be one evaluation's metrics"
            )
        if not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool):
            raise ValueError(
                f"{path} line {number} has no integer 'step' (got {record.get('step')!r}); "
                "every evaluation must record the training step"
            )
        records.append(record)
    return records


def load_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Read metrics.jsonl into arrays with a leading `eval` axis.

    Rules:
    - Evaluations are sorted by step; when a step occurs more than once (a run resumed
      from an earlier checkpoint re-evaluates it) the later line wins.
    - Numbers become float64 arrays, with NaN where an evaluation lacks the key or has
      `null`; integers present in every evaluation (`step`, `tokens_seen`) stay int64.
      Strings become `str` arrays ("" where missing).
    - Nested lists become arrays `[eval, ...]` (e.g. `induction [eval, layer, head]`),
      float64 and NaN-filled where missing (int64 when all integers, e.g. `icl_indices`);
      all evaluations must agree on the shape.
    - Objects are flattened one level with a dot: `best_induction` becomes
      `best_induction.layer`, `best_induction.head`, `best_induction.score`.
    - A key that is missing or `null` in every evaluation is left out.
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(
            f"{path} has no evaluations; train longer (the first evaluation writes the "
            "first line) or point at a finished run"
        )
    by_step: dict[int, dict] = {}
    for record in records:
        by_step[record["step"]] = _flatten(record)
    steps = sorted(by_step)
    rows = [by_step[s] for s in steps]
    keys = list(dict.fromkeys(key for row in rows for key in row))
    metrics = {"step": np.asarray(steps, dtype=np.int64)}
    for key in keys:
        if key == "step":
            continue
        column = [row.get(key) for row in rows]
        if all(value is None for value in column):
            continue
        metrics[key] = _column_array(column, key, path)
    return metrics


def _flatten(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = value
    return out


def _column_array(column: list, key: str, path: Path) -> np.ndarray:
    present = [value for value in column if value is not None]
    if all(isinstance(value, str) for value in present):
        return np.asarray([value or "" for value in column], dtype=str)
    if all(_is_number(value) for value in present):
        if len(present) == len(column) and all(isinstance(v, int) for v in present):
            return np.asarray(column, dtype=np.int64)  # counts stay integers
        return np.asarray([math.nan if v is None else float(v) for v in column], np.float64)
    try:
        arrays = [None if v is None else np.asarray(v, dtype=np.float64) for v in column]
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: key {key!r} mixes numbers, strings and lists across evaluations; "
            "each key must keep one type"
        ) from None
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) != 1:
        raise ValueError(
            f"{path}: key {key!r} changes shape across evaluations ({sorted(shapes)}); "
            "a run must record the same shape at every evaluation"
        )
    (shape,) = shapes
    out = np.full((len(column), *shape), np.nan)
    for i, array in enumerate(arrays):
        if array is not None:
            out[i] = array
    if len(present) == len(column) and all(_all_ints(v) for v in present):
        return out.astype(np.int64)  # e.g. icl_indices
    return out


def _all_ints(value) -> bool:
    if isinstance(value, list):
        return all(_all_ints(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_npz(path: Path, required: tuple[str, ...]) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} cannot be read ({err}); delete or rewrite it") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks the arrays {missing} (it has {sorted(arrays)}); it was not "
            "written by this version of `mechjax train`"
        )
    return arrays


def _load_per_token_loss(path: Path) -> PerTokenLoss | None:
    data = _load_npz(path, ("steps", "losses"))
    if data is None:
        return None
    steps = np.asarray(data["steps"]).astype(np.int64)
    losses = np.asarray(data["losses"], dtype=np.float64)
    if steps.ndim != 1 or losses.ndim != 2 or losses.shape[0] != steps.shape[0]:
        raise ValueError(
            f"{path}: 'losses' must be [snapshot, example] with one row per entry of "
            f"'steps' [snapshot]; got losses {losses.shape} and steps {steps.shape}"
        )
    order = np.argsort(steps, kind="stable")
    return PerTokenLoss(
        steps=steps[order],
        losses=losses[order],
        example_index=data.get("example_index"),
        token_index=data.get("token_index"),
    )


def _load_final_pattern(path: Path) -> FinalPattern | None:
    data = _load_npz(path, ("pattern", "layer", "head"))
    if data is None:
        return None
    pattern = np.asarray(data["pattern"], dtype=np.float64)
    if pattern.ndim != 2:
        raise ValueError(f"{path}: 'pattern' must be [query_pos, key_pos], got {pattern.shape}")
    seg_len = data.get("seg_len")
    return FinalPattern(
        pattern=pattern,
        tokens=data.get("tokens"),
        layer=int(data["layer"]),
        head=int(data["head"]),
        seg_len=None if seg_len is None else int(seg_len),
    )
