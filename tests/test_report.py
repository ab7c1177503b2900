"""Run directories, summaries, HTML reports, comparisons and the `report` / `compare`
commands, on FAKE run directories with synthetic metrics (no training needed).

The fake 2-layer run has a sigmoid-in-log-step ICL drop at step ~S0 with one induction
head (L1H2) and one previous-token head (L0H1) forming at the same time; the fake
1-layer run only drifts. Expected values are computed here from the synthetic inputs,
never copied from mechjax's output.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechjax.cli import main as cli_main
from mechjax.dynamics.pca import per_token_loss_pca
from mechjax.io.runs import find_runs, load_run
from mechjax.views.run_report import build_report, compare_runs, write_summary

S0 = 1500.0  # steepest point of the fake phase change
N_CTX = 64


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def fake_records(n_layers=2, n_heads=4, phase=True, seed=0, steps=None):
    rng = np.random.default_rng(seed)
    steps = (
        np.r_[0, np.unique(np.round(np.geomspace(10, 4000, 45)).astype(int))]
        if steps is None
        else steps
    )
    records = []
    for step in steps:
        s = sigmoid(8 * (np.log(max(step, 1)) - np.log(S0))) if phase else 0.0
        drift = 0.02 * np.log1p(step)
        index = np.arange(1, N_CTX)
        loss_by_pos = 4.1 - drift - 2.0 * s * (1 - np.exp(-index / 12.0))
        loss_by_pos += 0.01 * rng.standard_normal(N_CTX - 1)
        icl = loss_by_pos[50 - 1] - loss_by_pos[5 - 1]
        record = {
            "step": int(step),
            "tokens_seen": int(step) * 16 * N_CTX,
            "wall_time": 0.02 * step,
            "lr": 3e-3,
            "train_loss": float(loss_by_pos.mean() + 0.02 * rng.standard_normal()),
            "eval_loss": float(loss_by_pos.mean()),
            "icl_score": float(icl),
            "icl_indices": [5, 50],
            "icl_note": "proportional",
            "loss_by_pos": loss_by_pos.tolist(),
        }
        if n_layers:
            chance = 0.03 + 0.01 * rng.random((n_layers, n_heads))
            induction, prefix, previous = chance.copy(), chance.copy(), chance.copy()
            if phase and n_layers > 1:
                induction[1, 2] = 0.03 + 0.8 * s
                prefix[1, 2] = 0.05 + 0.7 * s
                previous[0, 1] = 0.1 + 0.8 * s
            layer, head = np.unravel_index(np.argmax(induction), induction.shape)
            record |= {
                "induction": induction.tolist(),
                "prefix_matching": prefix.tolist(),
                "previous_token": previous.tolist(),
                "k_composition": (0.1 + 0.3 * s * np.eye(n_heads)).tolist()
                if n_layers > 1
                else None,
                "best_induction": {
                    "layer": int(layer),
                    "head": int(head),
                    "score": float(induction.max()),
                },
            }
        else:
            record |= {"k_composition": None, "best_induction": None}
        records.append(record)
    return records


def make_run(path: Path, n_layers=2, phase=True, seed=0, n_examples=40, token_index=None):
    """Write a fake run directory in `mechjax train`'s format; returns (path, records)."""
    path.mkdir(parents=True)
    records = fake_records(n_layers, phase=phase, seed=seed)
    config = {
        "model": {
            "d_vocab": 64,
            "d_model": 32,
            "n_layers": n_layers,
            "n_heads": 4,
            "d_head": 8,
            "n_ctx": N_CTX,
            "d_mlp": None,
        },
        "train": {"lr": 3e-3, "batch_size": 16},
        "data": {"name": "tiled", "description": "repeated random segments"},
        "mechjax_version": "0.1.0",
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rng = np.random.default_rng(seed + 100)
    snap = np.array([r["step"] for r in records[::3]])
    in_repeat = rng.random(n_examples) < 0.5  # tokens that an induction head can predict
    s = sigmoid(8 * (np.log(np.maximum(snap, 1)) - np.log(S0)))[:, None] if phase else 0.0
    losses = 4.1 - 0.1 * np.log1p(snap)[:, None] * rng.random(n_examples) - 2.5 * s * in_repeat
    losses = losses + 0.05 * rng.standard_normal(losses.shape)
    np.savez(
        path / "per_token_loss.npz",
        steps=snap,
        losses=losses.astype(np.float32),
        example_index=np.arange(n_examples),
        token_index=rng.integers(1, N_CTX, n_examples) if token_index is None else token_index,
    )
    if n_layers:
        seg = 10
        pattern = np.full((2 * seg + 1, 2 * seg + 1), 0.0)
        for q in range(2 * seg + 1):
            pattern[q, : q + 1] = 0.2 / (q + 1)
            if q > seg:
                pattern[q, q - seg + 1] += 0.8
        np.savez(
            path / "final_pattern.npz",
            pattern=pattern,
            tokens=np.arange(2 * seg + 1),
            layer=1,
            head=2,
            seg_len=seg,
        )
    return path, records


# -- load_run -------------------------------------------------------------------------------
def test_load_run_reads_every_file(tmp_path):
    path, records = make_run(tmp_path / "run")
    run = load_run(path)
    assert run.name == "run" and run.config["data"]["name"] == "tiled"
    np.testing.assert_array_equal(run.steps, [r["step"] for r in records])
    np.testing.assert_allclose(run.metrics["icl_score"], [r["icl_score"] for r in records])
    assert run.metrics["induction"].shape == (len(records), 2, 4)
    assert run.metrics["loss_by_pos"].shape == (len(records), N_CTX - 1)
    np.testing.assert_allclose(run.metrics["induction"][-1], records[-1]["induction"])
    np.testing.assert_allclose(
        run.metrics["best_induction.score"], [r["best_induction"]["score"] for r in records]
    )
    assert list(run.metrics["icl_note"]) == ["proportional"] * len(records)
    assert run.per_token_loss.losses.shape == (len(records[::3]), 40)
    assert run.final_pattern.layer == 1 and run.final_pattern.seg_len == 10


def test_metrics_rules(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    lines = [
        {"step": 20, "eval_loss": 3.0, "k_composition": None, "best_induction": None, "note": "a"},
        {"step": 10, "eval_loss": 4.0, "induction": [[0.1, 0.2]], "k_composition": None},
        {"step": 20, "eval_loss": 2.5, "induction": [[0.3, 0.4]], "k_composition": None},  # resumed
        {"step": 30, "best_induction": {"layer": 0, "head": 1, "score": 0.5}},
    ]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run = load_run(path)
    np.testing.assert_array_equal(run.steps, [10, 20, 30])
    np.testing.assert_allclose(run.metrics["eval_loss"], [4.0, 2.5, np.nan])
    np.testing.assert_allclose(
        run.metrics["induction"], [[[0.1, 0.2]], [[0.3, 0.4]], [[np.nan] * 2]]
    )
    assert "k_composition" not in run.metrics and run.series("copying") is None
    np.testing.assert_allclose(run.metrics["best_induction.score"], [np.nan, np.nan, 0.5])
    assert run.final("eval_loss") == 2.5 and run.config == {} and run.per_token_loss is None
    assert "note" not in run.metrics  # only in the replaced step-20 line


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        load_run(tmp_path / "empty_dir")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a run directory"):
        load_run(tmp_path / "file.txt")


def test_corrupted_files_name_the_file(tmp_path):
    path, _ = make_run(tmp_path / "run")
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not valid JSON"):
        load_run(path)
    metrics.write_text("")
    with pytest.raises(ValueError, match="has no evaluations"):
        load_run(path)
    metrics.write_text('{"eval_loss": 3.0}\n')
    with pytest.raises(ValueError, match="no integer 'step'"):
        load_run(path)
    metrics.write_text(
        '{"step": 1, "induction": [[0.1]]}\n{"step": 2, "induction": [[0.1, 0.2]]}\n'
    )
    with pytest.raises(ValueError, match="'induction' changes shape"):
        load_run(path)
    # a last line still being written (no newline yet) is skipped with a warning
    metrics.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    with pytest.warns(UserWarning, match="unfinished last line"):
        assert load_run(path).n_evals == 3
    metrics.write_text("\n".join(lines) + "\n")
    (path / "per_token_loss.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="per_token_loss.npz cannot be read"):
        load_run(path)
    np.savez(path / "per_token_loss.npz", steps=np.arange(3), losses=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="per_token_loss.npz: 'losses' must be"):
        load_run(path)
    (path / "per_token_loss.npz").unlink()
    (path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_run(path)


# -- summary ----------------------------------------------------------------------------------
def test_summary_of_a_run_with_a_phase_change(tmp_path):
    path, records = make_run(tmp_path / "run2")
    summary = write_summary(path)
    assert json.loads((path / "summary.json").read_text()) == summary
    last = records[-1]
    assert summary["final_step"] == last["step"]
    assert summary["final_eval_loss"] == pytest.approx(last["eval_loss"])
    assert summary["final_train_loss"] == pytest.approx(last["train_loss"])
    assert summary["final_icl_score"] == pytest.approx(last["icl_score"])
    assert summary["icl_indices"] == [5, 50] and summary["icl_note"] == "proportional"
    assert summary["min_eval_loss"] == pytest.approx(min(r["eval_loss"] for r in records))
    induction = np.array(last["induction"])
    layer, head = np.unravel_index(np.argmax(induction), induction.shape)
    assert summary["best_induction_head"] == {
        "layer": int(layer),
        "head": int(head),
        "score": pytest.approx(induction.max()),
    }
    assert (layer, head) == (1, 2)
    assert summary["top_heads"]["previous_token"][0]["layer"] == 0
    assert summary["top_heads"]["previous_token"][0]["head"] == 1
    pc = summary["phase_change"]
    p10, p90 = S0 * 9 ** (-1 / 8), S0 * 9 ** (1 / 8)  # 10% / 90% points of the fake sigmoid
    assert pc["start"] <= p10 * 1.2 and pc["end"] >= p90 / 1.2
    assert pc["start"] < S0 < pc["end"] and pc["fraction"] > 0.75
    start = next(r for r in records if r["step"] == pc["start"])
    assert pc["tokens_start"] == start["tokens_seen"]
    assert summary["phase_change_note"] == "detected"


def test_summary_of_runs_without_a_phase_change(tmp_path):
    path, _ = make_run(tmp_path / "run1", n_layers=1, phase=False)
    summary = write_summary(path)
    assert summary["phase_change"] is None
    assert summary["max_best_induction_score"] < 0.3
    assert summary["max_k_composition"] is None
    path0, _ = make_run(tmp_path / "run0", n_layers=0, phase=False)
    summary = write_summary(path0)
    assert summary["best_induction_head"] is None and summary["top_heads"] == {}
    assert summary["phase_change"] is None and summary["phase_change_note"]


# -- report -----------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embedded_images(html_text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_text)
    ]


def test_build_report_is_self_contained(tmp_path):
    path, _ = make_run(tmp_path / "run <b>&")  # markup in the name must be escaped
    out = build_report(path)
    assert out == path / "report.html"
    text = out.read_text()
    images = embedded_images(text)
    pngs = sorted(path.glob("fig_*.png"))
    # loss, ICL, two head-score maps, loss by position, pattern, PCA, essential dynamics
    assert len(pngs) == 8 and len(images) == 8
    assert all(image.startswith(PNG_MAGIC) for image in images)
    assert sorted(images) == sorted(p.read_bytes() for p in pngs)
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing fetched from outside
    assert "run &lt;b&gt;&amp;" in text and "run <b>&" not in text
    # head table of the final evaluation: one row per head, values from the last record
    assert len(re.findall(r"<tr><th>L\dH\d</th>", text)) == 2 * 4
    assert "Detected between steps" in text
    assert json.loads((path / "summary.json").read_text())["phase_change"] is not None


def make_minimal_run(path: Path) -> Path:
    """Only metrics.jsonl with a few keys (cheap to draw)."""
    path.mkdir(parents=True)
    lines = [{"step": s, "train_loss": 4.0 - 0.1 * i} for i, s in enumerate([0, 10, 100])]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_report_of_minimal_run(tmp_path):
    """The report still builds, with what there is."""
    path = make_minimal_run(tmp_path / "tiny")
    text = build_report(path).read_text()
    assert len(embedded_images(text)) == 1  # the loss curve
    assert "No phase change detected" in text and "no ICL score" in text


# -- compare ----------------------------------------------------------------------------------
def test_compare_runs_shared_pca(tmp_path):
    a, _ = make_run(tmp_path / "a" / "run", seed=1)
    b, _ = make_run(
        tmp_path / "b" / "run",
        n_layers=1,
        phase=False,
        seed=2,
        token_index=np.load(a / "per_token_loss.npz")["token_index"],
    )
    out = compare_runs([a, b], tmp_path / "cmp")
    text = out.read_text()
    assert out.name == "compare.html" and len(embedded_images(text)) == 4
    assert "a/run" in text and "b/run" in text  # same dir names, disambiguated
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    want = per_token_loss_pca(
        [np.load(p / "per_token_loss.npz")["losses"].astype(np.float64) for p in (a, b)]
    )
    np.testing.assert_allclose(
        record["pca_explained_variance_ratio"], want.explained_variance_ratio, rtol=1e-9
    )
    assert record["summaries"][0]["phase_change"] is not None
    assert record["summaries"][1]["phase_change"] is None


def test_compare_skips_pca_for_different_tokens(tmp_path):
    a, _ = make_run(tmp_path / "a", seed=1)
    b, _ = make_run(tmp_path / "b", seed=2)  # other random token indices
    text = compare_runs([a, b], tmp_path / "cmp").read_text()
    assert "PCA skipped" in text and len(embedded_images(text)) == 3


def test_compare_never_replaces_user_files(tmp_path):
    a = make_minimal_run(tmp_path / "a")
    out_dir = tmp_path / "cmp"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    compare_runs([a], out_dir)
    compare_runs([a], out_dir)  # its own files may be replaced
    assert (out_dir / "notes.txt").read_text() == "mine"
    (out_dir / "compare_icl.png").write_bytes(PNG_MAGIC + b"a user's picture")
    with pytest.raises(
        FileExistsError, match="compare_icl.png exists and was not written by mechjax"
    ):
        compare_runs([a], out_dir)
    assert (out_dir / "compare_icl.png").read_bytes() == PNG_MAGIC + b"a user's picture"
    (out_dir / "compare_icl.png").unlink()
    (out_dir / "compare.html").write_text("<html>my page</html>")
    with pytest.raises(FileExistsError, match="compare.html"):
        compare_runs([a], out_dir)
    with pytest.raises(FileExistsError, match="is a file"):
        compare_runs([a], out_dir / "notes.txt")


# -- command line ----------------------------------------------------------------------------
def test_multi_seed_directory(tmp_path):
    make_run(tmp_path / "multi" / "seed_0")
    make_run(tmp_path / "multi" / "seed_1", seed=1)
    (tmp_path / "multi" / "checkpoints").mkdir()
    assert find_runs(tmp_path / "multi") == [tmp_path / "multi" / f"seed_{s}" for s in (0, 1)]
    assert find_runs(tmp_path / "multi" / "seed_1") == [tmp_path / "multi" / "seed_1"]
    with pytest.raises(FileNotFoundError, match=r"holds several runs \(seed_0, seed_1\)"):
        load_run(tmp_path / "multi")
    with pytest.raises(FileNotFoundError, match="nor do its sub-directories"):
        find_runs(tmp_path / "multi" / "checkpoints")


def test_cli_report_and_compare(tmp_path, capsys):
    a = make_minimal_run(tmp_path / "multi" / "seed_0")
    make_minimal_run(tmp_path / "multi" / "seed_1")
    assert cli_main(["report", str(a)]) == 0
    assert capsys.readouterr().out.strip() == str(a / "report.html")
    # a multi-seed directory compares all of its seeds
    assert cli_main(["compare", str(tmp_path / "multi"), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cmp" / "compare.html")
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [Path(r).name for r in record["runs"]] == ["seed_0", "seed_1"]
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "mechjax report: error:" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert (
        cli_main(["compare", str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "c2")]) == 2
    )
    assert "has no evaluations" in capsys.readouterr().err
    assert not (tmp_path / "c2").exists()  # nothing written when an input is bad


def test_imports_stay_light():
    """The reporting modules must not pull in torch / transformers / transformer_lens, and
    `import mechjax` must not load matplotlib."""
    code = (
        "import sys, mechjax; assert 'matplotlib' not in sys.modules; "
        "import mechjax.views.run_report, mechjax.cli.report, mechjax.cli.compare; "
        "bad = {'torch', 'transformers', 'transformer_lens'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
