"""The on-disk compilation cache (`mechjax.compilation_cache`).

JAX's cache settings are process-wide and read once, so every case runs in a fresh
Python process: the suite itself runs with the cache off (conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a sweep whose program compiles for well over the caching threshold; prints its grid
SWEEP = """
import json, sys
import numpy as np
import mechjax as mj
from mechjax.causal import activation_patching
cfg = mj.presets.attn_only(2, d_model=32, n_heads=4, d_vocab=50, n_ctx=32)
rng = np.random.default_rng(0)
params = mj.init_params(__import__("jax").random.key(0), cfg)
clean, corrupted = rng.integers(0, 50, (2, 2, 12))
grid = activation_patching(params, cfg, clean, corrupted, "resid_pre", ("layer", "pos"),
                           answers=(3, 5)).raw
print(json.dumps({"grid": np.asarray(grid).tolist(),
                  "dir": __import__("jax").config.jax_compilation_cache_dir}))
"""


def _python(code: str, env: dict, *args) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "MECHJAX_COMPILATION_CACHE"}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_cached_and_uncached_runs_give_identical_results(tmp_path):
    cache = tmp_path / "xla"
    runs = []
    for setting in (str(cache), str(cache), "0"):  # cold, warm (read back), off
        out = _python(SWEEP, {"MECHJAX_COMPILATION_CACHE": setting})
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    assert runs[0]["dir"] == runs[1]["dir"] == str(cache)
    assert runs[2]["dir"] is None
    assert any(name.startswith("jit__sweep") for name in _entries(cache))
    assert runs[0]["grid"] == runs[1]["grid"] == runs[2]["grid"]  # bit for bit
    assert len({x for row in runs[0]["grid"] for x in row}) > 1  # not a constant grid


def test_a_cache_the_program_configured_is_kept(tmp_path):
    code = """
import sys, jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 7.0)
import mechjax as mj
got = mj.enable_compilation_cache(sys.argv[2])
print(got, jax.config.jax_compilation_cache_dir,
      jax.config.jax_persistent_cache_min_compile_time_secs)
"""
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    out = _python(code, {}, str(theirs), str(ours))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(theirs), str(theirs), "7.0"]
    assert not ours.exists()


def test_enabling_sets_folder_size_cap_and_threshold(tmp_path):
    code = """
import sys, jax, mechjax as mj
print(mj.enable_compilation_cache(sys.argv[1], max_bytes=1 << 20),
      jax.config.jax_compilation_cache_max_size,
      jax.config.jax_persistent_cache_min_compile_time_secs)
try:
    mj.enable_compilation_cache(sys.argv[1] + "/file")
except ValueError as err:
    print("refused")
"""
    folder = tmp_path / "cache"
    out = _python(code, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, str(folder))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(folder), str(1 << 20), "0.1"]
    # an env var naming a file (not a folder) warns at import instead of failing it
    (tmp_path / "a_file").write_text("x")
    out = _python("import mechjax", {"MECHJAX_COMPILATION_CACHE": str(tmp_path / "a_file")})
    assert out.returncode == 0 and "not a folder" in out.stderr


def test_the_command_caches_by_default_and_not_when_told(tmp_path):
    xdg = tmp_path / "xdg"
    command = [sys.executable, "-m", "mechjax"]
    env = {k: v for k, v in os.environ.items() if k != "MECHJAX_COMPILATION_CACHE"}
    env["XDG_CACHE_HOME"] = str(xdg)
    run = dict(env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    out = subprocess.run(
        [*command, "analyze", "checkpoints/attn1", "--out", str(tmp_path / "a"), "--batch", "2"],
        **run,
    )
    assert out.returncode == 0, out.stderr
    assert _entries(xdg / "mechjax" / "xla"), "the command wrote no compiled program"
    # a command refused at once (no such model) still set the cache up, unless told not to
    for flags, setting, expect in (([], None, True), (["--no-compilation-cache"], None, False),
                                   ([], "0", False)):  # fmt: skip
        xdg = tmp_path / f"xdg-{len(flags)}-{setting}"
        env["XDG_CACHE_HOME"] = str(xdg)
        env.pop("MECHJAX_COMPILATION_CACHE", None)
        if setting is not None:
            env["MECHJAX_COMPILATION_CACHE"] = setting
        out = subprocess.run([*command, *flags, "analyze", str(tmp_path / "none")], **run)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert (xdg / "mechjax" / "xla").is_dir() == expect, (flags, setting)
