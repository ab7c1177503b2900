"""The command line as a user meets it: bad input, refused options, divergence, Ctrl-C
and a damaged checkpoint each end with one line on stderr and a distinct exit code,
never a traceback (exit codes in `mechjax.cli`)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

FAST = ["--preset", "attn2-synthetic", "--no-progress", "--set", "train.n_evals=3"]


def mechjax(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mechjax", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "options, words",
    [
        (["--set", "train.lr=abc"], "lr must be a number, got 'abc'"),
        (["--set", "model.n_layers=1.5"], "n_layers must be an integer, got 1.5"),
        (["--set", 'train.seeds=[1, "x"]'], "seeds must be a list of integers"),
        (["--set", "model.bogus=1"], "unknown model fields ['bogus']"),
        (["--set", "data.fraction=abc"], "fraction must be a number, got 'abc'"),
        (["--set", "data.min_len=1.5"], "min_len must be an integer, got 1.5"),
        (["--set", "lr=1"], "--set takes SECTION.FIELD=VALUE"),
        (["--data", "no-such-data"], "unknown dataset 'no-such-data'"),
    ],
)
def test_bad_options_end_in_one_line(options, words):
    result = mechjax("train", *options, "--show-config")
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("mechjax train: error:") and words in line, line


def test_any_dataset_works_on_any_preset():
    """The default preset's mixture options do not apply to plain text: dropped, with a
    note naming them."""
    result = mechjax("train", "--data", "stdlib", "--show-config")
    assert result.returncode == 0, result.stderr
    note = _one_line(result.stderr)
    assert note.startswith("note:") and "fraction" in note
    data = json.loads(result.stdout)["data"]
    assert data["name"] == "stdlib" and "fraction" not in data
    # options set explicitly for the new dataset stay, and are checked
    result = mechjax("train", "--data", "markov", "--set", "data.n_states=3", "--show-config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["n_states"] == 3


def test_an_existing_run_is_refused_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = mechjax("train", *FAST, "--steps", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "already exists" in _one_line(result.stderr)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_divergence_ends_in_one_line_with_its_own_exit_code(tmp_path):
    result = mechjax(
        "train", *FAST, "--steps", "3", "--set", "train.lr=1e30", "--out", str(tmp_path / "r")
    )
    assert result.returncode == 3
    line = _one_line(result.stderr)
    assert line.startswith("mechjax train: diverged:") and "Lower --lr" in line


def test_ctrl_c_saves_and_ends_in_one_line(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "mechjax", "train", *FAST, "--steps", "100000", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)  # training has started once the step-0 evaluation is written
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130
    assert "interrupted at step" in _one_line(stderr)
    assert list((out / "checkpoints").glob("step_*"))


def test_resume_skips_a_damaged_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    options = [*FAST, "--set", "train.checkpoint_every=3", "--out", str(out)]
    first = mechjax("train", *options, "--steps", "7")
    assert first.returncode == 0, first.stderr
    # as if the process died after its last checkpoint, before exporting the model
    for name in ("final_model", "final_pattern.npz", "summary.json", "report.html"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    last = out / "checkpoints" / "step_00000007"
    for leaf in (last / "state").rglob("*"):
        if leaf.is_file():
            leaf.write_bytes(b"damaged")  # every file of the newest checkpoint
    # continue the same run further: it resumes from step 6, keeping the damaged copy
    result = mechjax("train", *options, "--steps", "7", "--resume")
    assert result.returncode == 0, result.stderr
    warning = _one_line(result.stderr)
    assert warning.startswith("mechjax: warning:") and "step_00000007" in warning
    assert (out / "checkpoints" / "step_00000007.damaged").is_dir()
    assert (out / "checkpoints" / "step_00000007" / "state").is_dir()  # written again
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 7


def test_no_traceback_reaches_the_user_from_a_missing_run(tmp_path):
    for argv in (["report", str(tmp_path / "absent")], ["analyze", str(tmp_path / "absent")]):
        result = mechjax(*argv)
        assert result.returncode == 2
        _one_line(result.stderr)
