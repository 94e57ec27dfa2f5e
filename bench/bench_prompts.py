"""Prompt encoding with the full-size UMT5-XXL text encoder (random weights) where it runs in the
gpu_text_cpu profile, the CPU: the prompt's real tokens only (what the studio does) against the pipelines'
padding to 512 tokens, and a repeated prompt (kept embeddings).

    python bench/bench_prompts.py            # needs about 12 GB of RAM (bf16 weights)
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.prompts import MAX_TOKENS, PromptEncoder  # noqa: E402
from pipelines.testmodels import _UMT5_XXL, _tokenizer  # noqa: E402

PROMPT = "A red fox trots through fresh snow at sunrise, cinematic, shallow depth of field"


def main() -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: 11.4 GB instead of 22.7
    t0 = time.perf_counter()
    encoder = UMT5EncoderModel(UMT5Config(**_UMT5_XXL)).eval()
    torch.set_default_dtype(torch.float32)
    print(f"built the UMT5-XXL encoder in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    tokenizer = _tokenizer()
    prompts = PromptEncoder(tokenizer, encoder)
    tokens = len(tokenizer(PROMPT).input_ids)

    t0 = time.perf_counter()
    prompts.embeddings(PROMPT, torch.device("cpu"), torch.bfloat16)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompts.embeddings(PROMPT, torch.device("cpu"), torch.bfloat16)
    kept = time.perf_counter() - t0
    padded_ids = tokenizer([PROMPT], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.no_grad():
        encoder(padded_ids.input_ids, padded_ids.attention_mask)
    padded = time.perf_counter() - t0
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; prompt of {tokens} tokens")
    print(f"  real tokens only: {ours:.2f} s   padded to {MAX_TOKENS}: {padded:.2f} s   kept: {kept * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
