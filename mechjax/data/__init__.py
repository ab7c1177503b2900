"""Data for training toy transformers: a byte tokenizer, synthetic induction tasks and
real-text corpora, all numpy and deterministic from a seed.

    ds = make_dataset("repeated")                # or "trigger-bigrams", "markov",
                                                 #    "arithmetic", "stdlib", "text:PATH"
    tokens = ds.batch(seed, step, batch_size)    # [batch, n_ctx] int32, BOS first
    held_out = ds.eval_batches(n, batch_size)    # [n, batch, n_ctx] int32
"""

from .arithmetic import Arithmetic
from .registry import DATASET_NAMES, Dataset, dataset_options, make_dataset
from .sampling import eval_rng, step_rng
from .synthetic import RandomMarkov, RepeatedSegments, TriggerBigrams, stationary_distribution
from .text import TextCorpus, find_text_files, stdlib_corpus, stdlib_files
from .tokenizer import ByteTokenizer

__all__ = [
    "Arithmetic",
    "DATASET_NAMES",
    "ByteTokenizer",
    "Dataset",
    "RandomMarkov",
    "RepeatedSegments",
    "TextCorpus",
    "TriggerBigrams",
    "eval_rng",
    "find_text_files",
    "dataset_options",
    "make_dataset",
    "stationary_distribution",
    "stdlib_corpus",
    "stdlib_files",
    "step_rng",
]
