"""Real text: a folder of files, tokenized once, sampled as fixed-length windows.

    corpus = TextCorpus.from_paths("my_texts/", n_ctx=256)   # byte-level by default
    tokens = corpus.batch(seed, step, batch_size)            # [batch, n_ctx] int32
    held_out = corpus.eval_batches(n, batch_size)            # [n, batch, n_ctx] int32
    stdlib_corpus()                                          # the embedded default

Files are found recursively and sorted by path; files that do not decode as UTF-8 (and
empty files) are skipped. The split is by file: every `eval_every`-th file (the 20th,
40th, ...) is held out for evaluation, so no document is in both splits. Each split is
one token stream, every document preceded by BOS. A training row is BOS followed by
n_ctx - 1 tokens from a random offset of the training stream, drawn from
`np.random.default_rng([seed, step])`.

The tokenized stream is cached under `~/.cache/mechjax/` (or `$XDG_CACHE_HOME/mechjax`),
keyed by the tokenizer and every candidate file's path, size and modification time, so
a second run starts at once; an unwritable cache directory only costs the speed-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from .sampling import check_batch_size, check_n_batches, step_rng
from .tokenizer import ByteTokenizer

# Directories of the standard library that are not library source: third-party
# packages, the test suites (test/, tests/ and IDLE's idle_test/) and byte-code caches.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mechjax"


def find_text_files(
    paths, suffixes: tuple[str, ...] | None = None, exclude_dirs=frozenset()
) -> list[Path]:
    """Every file under `paths` (files or folders, searched recursively), sorted, without
    duplicates. Skips hidden names, `__pycache__` and folders named in `exclude_dirs`;
    with `suffixes` (e.g. (".py",)) keeps only files that end with one of them. Named
    files are kept whatever their suffix."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    skip_dirs = set(exclude_dirs) | {"__pycache__"}
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                # prune in place so os.walk does not descend into skipped folders
                dirs[:] = [d for d in dirs if d not in skip_dirs and not d.startswith(".")]
                for name in files:
                    if name.startswith("."):
                        continue
                    if suffixes is None or name.endswith(tuple(suffixes)):
                        found.add((Path(root) / name).resolve())
        else:
            raise ValueError(f"text path {str(path)!r} does not exist (or is not a file/folder)")
    return sorted(found, key=lambda p: p.as_posix())


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """Tokenized text split by file into a training and an evaluation stream.

    train_tokens / eval_tokens: [tokens] uint16 (int32 for vocabularies over 65,536),
        each document preceded by BOS; read-only.
    train_files / eval_files: the documents of each split, in stream order.
    """

    train_tokens: np.ndarray
    eval_tokens: np.ndarray
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    n_ctx: int
    tokenizer: object
    eval_every: int
    n_bytes: int
    name: str = "text"

    def __post_init__(self):
        if self.n_ctx < 2:
            raise ValueError(f"n_ctx must be >= 2 (BOS and one token), got {self.n_ctx}")
        if len(self.train_tokens) < self.n_ctx - 1:
            raise ValueError(
                f"{self.name}: the training split has {len(self.train_tokens)} tokens, fewer "
                f"than one window of n_ctx - 1 = {self.n_ctx - 1}; add text or lower n_ctx"
            )

    @classmethod
    def from_paths(
        cls,
        paths,
        tokenizer=None,
        n_ctx: int = 256,
        eval_every: int = 20,
        *,
        suffixes: tuple[str, ...] | None = None,
        exclude_dirs=frozenset(),
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> TextCorpus:
        """Read, tokenize and split the text files under `paths` (a path or a list).

        tokenizer: anything with `vocab_size`, `bos_id` and `encode(text, bos=False)`;
            default `ByteTokenizer()`. Caching needs a `cache_key` string attribute.
        eval_every: hold out every eval_every-th file (by sorted path) for evaluation.
        suffixes, exclude_dirs: see `find_text_files`.
        cache, cache_dir: reuse/store the tokenized stream (default `~/.cache/mechjax`).
        """
        tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 2:
            raise ValueError(f"eval_every must be an int >= 2, got {eval_every!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int):
            raise ValueError(f"n_ctx must be an int, got {n_ctx!r}")
        where = _describe_paths(paths)
        candidates = find_text_files(paths, suffixes, exclude_dirs)
        files, tokens, starts = _tokenize_cached(candidates, tokenizer, cache, cache_dir)
        if len(files) == 0:
            raise ValueError(
                f"no readable text under {where}: found {len(candidates)} candidate files, "
                "none non-empty UTF-8; point to a file or folder of text files"
            )
        held_out = (np.arange(len(files)) + 1) % eval_every == 0
        docs = [tokens[starts[i] : starts[i + 1]] for i in range(len(files))]

        def stream(mask):
            parts = [d for d, keep in zip(docs, mask) if keep]
            out = np.concatenate(parts) if parts else tokens[:0].copy()
            out.setflags(write=False)
            return out

        return cls(
            train_tokens=stream(~held_out),
            eval_tokens=stream(held_out),
            train_files=tuple(str(f) for f, h in zip(files, held_out) if not h),
            eval_files=tuple(str(f) for f, h in zip(files, held_out) if h),
            n_ctx=n_ctx,
            tokenizer=tokenizer,
            eval_every=eval_every,
            n_bytes=int(sum(f.stat().st_size for f in files)),
            name=name or f"text:{where}",
        )

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_id)

    @property
    def n_files(self) -> int:
        return len(self.train_files) + len(self.eval_files)

    def batch(self, seed, step, batch_size) -> np.ndarray:
        """tokens [batch, n_ctx] int32: BOS + n_ctx - 1 tokens from random training offsets."""
        rng = step_rng(seed, step)
        batch_size = check_batch_size(batch_size)
        offsets = rng.integers(0, len(self.train_tokens) - (self.n_ctx - 1) + 1, size=batch_size)
        return self._windows(self.train_tokens, offsets)

    def eval_batches(self, n, batch_size) -> np.ndarray:
        """tokens [n, batch, n_ctx] int32: windows at evenly spaced offsets of the held-out
        stream (fixed, no randomness), so every evaluation sees the same text."""
        n, batch_size = check_n_batches(n), check_batch_size(batch_size)
        if len(self.eval_tokens) < self.n_ctx - 1:
            raise ValueError(
                f"{self.name}: the evaluation split has {len(self.eval_tokens)} tokens "
                f"({len(self.eval_files)} held-out files of {self.n_files}), fewer than one "
                f"window of {self.n_ctx - 1}; use more files or a smaller eval_every "
                f"(now {self.eval_every})"
            )
        last = len(self.eval_tokens) - (self.n_ctx - 1)
        offsets = np.linspace(0, last, n * batch_size).round().astype(np.int64)
        return self._windows(self.eval_tokens, offsets).reshape(n, batch_size, self.n_ctx)

    def token_str(self, token_id: int) -> str:
        return self.tokenizer.token_str(token_id)

    def describe(self) -> str:
        return (
            f"{self.name}: {self.n_files} files, {self.n_bytes:,} bytes; 1 file in "
            f"{self.eval_every} held out ({len(self.eval_files)} files, "
            f"{len(self.eval_tokens):,} tokens); training {len(self.train_files)} files, "
            f"{len(self.train_tokens):,} tokens; vocab {self.vocab_size}, context {self.n_ctx}"
        )

    def _windows(self, stream: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """[len(offsets), n_ctx] int32: BOS, then stream[offset : offset + n_ctx - 1]."""
        body = stream[offsets[:, None] + np.arange(self.n_ctx - 1)[None, :]].astype(np.int32)
        bos = np.full((len(offsets), 1), self.bos_id, np.int32)
        return np.concatenate([bos, body], axis=1)


def stdlib_files() -> tuple[Path, list[Path]]:
    """(root, files): the Python standard library's `.py` sources on this machine, without
    site-packages, the test suites and byte-code caches."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"the Python standard library was not found at {root}")
    return root, find_text_files(root, (".py",), STDLIB_EXCLUDED_DIRS)


def stdlib_corpus(
    n_ctx: int = 256,
    eval_every: int = 20,
    tokenizer=None,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> TextCorpus:
    """The embedded default corpus: this Python's standard library source (`stdlib_files`;
    on CPython 3.11, 734 files and 12.1 MB, a few of them empty). Arguments as in
    `TextCorpus.from_paths`."""
    root, files = stdlib_files()
    version = ".".join(map(str, sys.version_info[:2]))
    return TextCorpus.from_paths(
        files,
        tokenizer,
        n_ctx,
        eval_every,
        cache=cache,
        cache_dir=cache_dir,
        name=f"stdlib (Python {version} standard library source under {root})",
    )


def _describe_paths(paths) -> str:
    if isinstance(paths, str | os.PathLike):
        return str(paths)
    paths = [str(p) for p in paths]
    shown = ", ".join(paths[:3])
    return shown if len(paths) <= 3 else f"{shown}, ... ({len(paths)} paths)"


def _tokenize_cached(candidates: list[Path], tokenizer, cache: bool, cache_dir):
    """-> (files kept, tokens [n] uint16/int32, starts [n_files + 1]) for the candidates,
    from the cache when the tokenizer and every file's (path, size, mtime) match."""
    key = getattr(tokenizer, "cache_key", None)
    cache_file = None
    if cache and isinstance(key, str):
        listing = [[p.as_posix(), s.st_size, s.st_mtime_ns] for p in candidates for s in [p.stat()]]
        digest = hashlib.sha256(json.dumps([key, listing]).encode()).hexdigest()[:24]
        cache_file = Path(cache_dir or default_cache_dir()) / f"tokens-{digest}.npz"
        loaded = _load(cache_file, len(candidates))
        if loaded is not None:
            kept, tokens, starts = loaded
            return [p for p, k in zip(candidates, kept) if k], tokens, starts

    kept, docs = np.zeros(len(candidates), bool), []
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    bos = np.array([tokenizer.bos_id], dtype)
    for i, path in enumerate(candidates):
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable or not text
        if text:
            kept[i] = True
            docs.append(bos)
            docs.append(np.asarray(tokenizer.encode(text, bos=False)).astype(dtype))
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype)
    lengths = [len(d) for d in docs[1::2]]
    starts = np.concatenate([[0], np.cumsum(np.add(lengths, 1))]).astype(np.int64)
    if cache_file is not None:
        _store(cache_file, kept, tokens, starts)
    return [p for p, k in zip(candidates, kept) if k], tokens, starts


def _load(cache_file: Path, n_candidates: int):
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            kept, tokens, starts = data["kept"], data["tokens"], data["starts"]
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: tokenize again
    if len(kept) != n_candidates or len(starts) != kept.sum() + 1 or starts[-1] != len(tokens):
        return None
    return kept, tokens, starts


def _store(cache_file: Path, kept, tokens, starts) -> None:
    """Write atomically (a temporary name, then rename); give up quietly if unwritable."""
    tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, kept=kept, tokens=tokens, starts=starts)
        os.replace(tmp, cache_file)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
