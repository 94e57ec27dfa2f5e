"""Prompt encoding as its own stage: the UMT5 encoder reads only the prompt's real tokens, and results are kept.

The Wan pipelines pad every prompt to 512 tokens before the 5.7B-parameter text encoder runs; with an
attention mask the padding changes nothing in the real tokens' outputs (UMT5's position bias is relative),
so encoding the real tokens alone gives the same embeddings at a fraction of the work. That matters most
where the encoder runs on the CPU (the `gpu_text_cpu` profile). Re-running a prompt with another seed, the
most common edit, skips the encoder entirely: a few encodings are cached.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

MAX_TOKENS = 512  # what the Wan pipelines pad to and the transformer's text context expects
CACHE_SIZE = 8  # (prompt, negative) pairs; one 512x4096 bf16 embedding is 4 MB


class PromptEncoder:
    """Embeddings for (prompt, negative prompt) from one text encoder, in the pipeline's expected layout."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> (tokens, dim) on the CPU
        self.encoder_calls = 0  # for tests and the log

    def embeddings(self, prompt: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, 512, dim) embeddings on `device`: the prompt's token states, zero-padded as the pipeline pads them."""
        states = self._cache.get(prompt)
        if states is None:
            states = self._encode(prompt)
            self._cache[prompt] = states
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(prompt)
        padded = states.new_zeros(MAX_TOKENS, states.shape[1])
        padded[: states.shape[0]] = states
        return padded.unsqueeze(0).to(device=device, dtype=dtype)

    def clear(self) -> None:
        """Forget every kept embedding (a benchmark compares like with like)."""
        self._cache.clear()

    @torch.no_grad()
    def _encode(self, prompt: str) -> torch.Tensor:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean
        from diffusers.utils.torch_utils import get_module_execution_device

        tokens = self.tokenizer(
            [prompt_clean(prompt)], max_length=MAX_TOKENS, truncation=True, add_special_tokens=True,
            return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        # Inputs go where the encoder computes: its offload hook's device, or the CPU in gpu_text_cpu.
        device = get_module_execution_device(self.text_encoder)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        self.encoder_calls += 1
        states = self.text_encoder(ids, mask).last_hidden_state[0]
        return states.to("cpu")
