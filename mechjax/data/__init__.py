"""Data for training and reading transformers: tokenizers, synthetic induction tasks and
real-text corpora, all numpy and deterministic from a seed.

    ds = make_dataset("repeated")                # or "trigger-bigrams", "markov",
                                                 #    "arithmetic", "stdlib", "text:PATH"
    tokens = ds.batch(seed, step, batch_size)    # [batch, n_ctx] int32, BOS first
    held_out = ds.eval_batches(n, batch_size)    # [n, batch, n_ctx] int32

Tokenizers share one interface (`Tokenizer`): the byte tokenizer of the toys, a BPE
trained on any corpus, and a real checkpoint's `tokenizer.json` read the same.

    tok = load_tokenizer(folder)                 # or train_bpe(texts, 512), ByteTokenizer()
    tokens = tok.to_tokens(["The cat", "A dog sat"], padding_side="left")   # [batch, pos]
    tok.to_str_tokens("The cat"), tok.to_string(tokens), tok.to_single_token(" cat")
"""

from .arithmetic import Arithmetic
from .hf_tokenizer import HFTokenizer, load_tokenizer, train_bpe
from .registry import DATASET_NAMES, Dataset, dataset_options, make_dataset
from .sampling import eval_rng, step_rng
from .synthetic import RandomMarkov, RepeatedSegments, TriggerBigrams, stationary_distribution
from .text import TextCorpus, find_text_files, stdlib_corpus, stdlib_files
from .tokenizer import ByteTokenizer, Tokenizer

__all__ = [
    "Arithmetic",
    "DATASET_NAMES",
    "ByteTokenizer",
    "Dataset",
    "HFTokenizer",
    "RandomMarkov",
    "RepeatedSegments",
    "TextCorpus",
    "Tokenizer",
    "TriggerBigrams",
    "eval_rng",
    "find_text_files",
    "load_tokenizer",
    "dataset_options",
    "make_dataset",
    "stationary_distribution",
    "stdlib_corpus",
    "stdlib_files",
    "step_rng",
    "train_bpe",
]
