"""The on-disk cache of compiled programs: a second process skips XLA compilation.

A jitted function is traced to a jaxpr, lowered to StableHLO and compiled by XLA; only
the last step is cached on disk (keyed by the program, the backend, the jax version and
the XLA flags), so a warm start still pays tracing and lowering. On this project's
2-core machines compilation is most of a first call: a toy's patching sweep compiles
for 1-2 s and then runs in 0.03 s.

    import mechjax as mj
    mj.enable_compilation_cache()        # ~/.cache/mechjax/xla (or $XDG_CACHE_HOME)
    mj.enable_compilation_cache("/scratch/xla", max_bytes=4 << 30)

or, before starting Python, `MECHJAX_COMPILATION_CACHE=1` (the default folder) or
`=/some/folder` (`import mechjax` reads it; `0` turns the cache off). The `mechjax`
command turns the cache on by default (`--no-compilation-cache`, or the variable set to
0, turns it off).

A cache the program already configured (`jax.config.update("jax_compilation_cache_dir",
...)`, or `JAX_COMPILATION_CACHE_DIR`) is respected: it keeps its folder and settings.
The cache is trusted code: never point it at a folder others can write to.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "MECHJAX_COMPILATION_CACHE"
DEFAULT_MAX_BYTES = 2 << 30  # least-recently-used entries are evicted past this size
# JAX writes only programs that took longer than this to compile (its default, 1 s,
# skips most of a toy session's programs, which compile in 0.2-0.9 s here; reading an
# entry back costs a few milliseconds)
MIN_COMPILE_TIME_S = 0.1
_OFF = ("0", "false", "no", "off")


def default_directory() -> str:
    """`$XDG_CACHE_HOME/mechjax/xla`, or `~/.cache/mechjax/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mechjax", "xla")


def configured_directory() -> str | None:
    """The folder JAX's compilation cache uses now (None: no cache)."""
    return jax.config.jax_compilation_cache_dir or None


def enable_compilation_cache(
    path: str | os.PathLike | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_compile_time_s: float = MIN_COMPILE_TIME_S,
) -> str:
    """Cache compiled programs in `path` (default `default_directory()`), at most
    `max_bytes` (least recently used entries evicted; -1: no limit), programs that took
    at least `min_compile_time_s` to compile. Returns the folder in use.

    If the program already configured a cache folder, that folder and its settings are
    kept and returned (calling this twice is harmless). Results are identical with or
    without the cache: it stores the compiled executable, never a result.
    """
    existing = configured_directory()
    if existing is not None:
        return existing
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < -1:
        raise ValueError(f"max_bytes must be an int >= 0, or -1 for no limit, got {max_bytes!r}")
    folder = os.path.abspath(os.path.expanduser(os.fspath(path or default_directory())))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"compilation cache {folder} exists and is not a folder; choose a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the compilation cache folder {folder} ({err.strerror}); "
            f"choose a writable folder"
        ) from err
    jax.config.update("jax_compilation_cache_max_size", max_bytes)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


def cache_setting_from_env() -> str | None:
    """What `MECHJAX_COMPILATION_CACHE` asks for: None (unset), "off", or a folder
    ("" for the default: the variable is 1/true/yes/on)."""
    value = os.environ.get(ENV_VAR)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.lower() in _OFF:
        return "off"
    if value.lower() in ("1", "true", "yes", "on"):
        return ""
    return value


def enable_from_env(default_on: bool = False) -> str | None:
    """Apply `MECHJAX_COMPILATION_CACHE` (or, unset, turn the cache on when
    `default_on`). Returns the folder in use, or None when the cache stays off."""
    setting = cache_setting_from_env()
    if setting == "off" or (setting is None and not default_on):
        return configured_directory()
    return enable_compilation_cache(setting or None)
