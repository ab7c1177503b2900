"""A real-size HuggingFace checkpoint with random weights and a locally trained
tokenizer, for running the real-model workflow without a model hub.

    python experiments/random_checkpoint.py OUT            Gemma 2 2B (26 layers), bf16

Builds `Gemma2ForCausalLM` at the published 2B size with `transformers` (random weights,
seeded), saves it in bfloat16 as Google publishes it (`config.json` + sharded
`*.safetensors`), and writes a byte-level BPE tokenizer trained with `tokenizers` on the
Python standard library's source that splits digits one per token, as Gemma's does
(`tokenizer.json` + `tokenizer_config.json`). Needs torch and transformers (the test
extra); takes about two minutes and 15 GiB of memory at its peak (float32 init).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=8000, help="tokenizer vocabulary size")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(
            f"error: {args.out} exists; pick a new folder (nothing is overwritten)", file=sys.stderr
        )
        return 2
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from mechjax.data import stdlib_files, train_bpe

    torch.manual_seed(args.seed)
    config = Gemma2Config(  # the published gemma-2-2b sizes (transformers' defaults are 9B-ish)
        vocab_size=256_000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=8192,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        bos_token_id=0,  # the ids train_bpe gives its special tokens
        eos_token_id=1,
        pad_token_id=2,
    )
    with torch.device("cpu"):
        model = Gemma2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size="2GB")
    del model

    texts = [f"{a}{op}{b}={a + b}\n" for a in range(10) for b in range(10) for op in "+-*/"]
    texts += [path.read_text(errors="replace") for path in stdlib_files()[1][:400]]
    tokenizer = train_bpe(
        texts,
        args.vocab,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        digits_individually=True,
    )
    tokenizer.save(args.out)
    print(f"wrote {args.out}: Gemma 2 2B (random, bf16) + a {tokenizer.vocab_size}-token tokenizer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
