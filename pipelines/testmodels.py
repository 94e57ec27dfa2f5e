"""Tiny random-weight Wan pipelines, built offline and saved in the diffusers folder format.

They exist so that tests, CI and a machine without the real weights exercise the same
`from_pretrained` path as the real models. Output is noise; shapes, configs and code paths are real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from pipelines.catalogue import TEST_TINY, TEST_TINY_A14B, TEST_TINY_I2V_A14B, TEST_TINY_WAN21, FastWeights

# Bump when the layout below changes so cached folders are rebuilt.
BUILD_VERSION = 1
_VOCAB_WORDS = (
    "a the of and in on with to is at by for from red green blue cat dog city night day sea sky "
    "walks runs flies car light rain snow sun tree house slow fast camera pan zoom close wide"
).split()


def cache_root() -> Path:
    """Where built test models live (WAN_STUDIO_CACHE, else the user's cache folder)."""
    root = os.environ.get("WAN_STUDIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wan-studio")
    return Path(root) / "test-models"


def ensure_test_model(model_id: str) -> Path:
    """Return the folder of a built test model, building it the first time."""
    if model_id not in _BUILDERS:
        raise ValueError(f"'{model_id}' is not a test model")
    folder = cache_root() / f"{model_id}-v{BUILD_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=folder.parent))
    try:
        _BUILDERS[model_id](staging)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _tokenizer():
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>"] + [f"\u2581{w}" for w in _VOCAB_WORDS] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = [(piece, 0.0 if i < 3 else -float(i)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return UMT5EncoderModel(config).eval()


def _scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def _transformer(channels: int, heads: int = 2, head_dim: int = 12, in_channels: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=in_channels or channels, out_channels=channels, text_dim=32, freq_dim=256, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip


def _wan21_vae():
    """The Wan2.1 layout's VAE (16 channels, 8x spatial), shared by the Wan2.1 and A14B test layouts."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
    )  # fmt: skip


def _wan21_shared_parts() -> dict:
    """The tokenizer, text encoder and VAE of the Wan2.1-VAE test layouts (Wan2.1, A14B, I2V-A14B): the same
    weights in each, as the real A14B pair and Wan2.1 1.3B share theirs, so their catalogue entries share
    `shared_components` and a switch between them keeps these loaded. Seeded here; the caller's transformers
    are drawn next from the same generator, as they always were."""
    torch.manual_seed(0)
    vae = _wan21_vae()
    tokenizer = _tokenizer()
    return {"tokenizer": tokenizer, "text_encoder": _text_encoder(len(tokenizer)), "vae": vae.eval()}


def _save(pipe, folder: Path, model_id: str) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "wan_studio_test_model.json").write_text(
        json.dumps({"model": model_id, "build_version": BUILD_VERSION, "weights": "random"}, indent=2)
    )


def build_ti2v(folder: Path) -> None:
    """Wan2.2 TI2V-5B layout: 48-channel residual VAE with 2x2 patching, expand_timesteps, one model for both tasks."""
    from diffusers import AutoencoderKLWan, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=12, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16,
        scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    )  # fmt: skip
    tokenizer = _tokenizer()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(len(tokenizer)),
        vae=vae.eval(),
        scheduler=_scheduler(5.0),
        transformer=_transformer(48),
        expand_timesteps=True,
    )
    _save(pipe, folder, TEST_TINY)


def build_wan21(folder: Path) -> None:
    """Wan2.1 layout: 16-channel VAE (8x spatial), one transformer, text-to-video."""
    from diffusers import WanPipeline

    pipe = WanPipeline(**_wan21_shared_parts(), scheduler=_scheduler(3.0), transformer=_transformer(16))
    _save(pipe, folder, TEST_TINY_WAN21)


def build_a14b(folder: Path) -> None:
    """Wan2.2 A14B layout: a high-noise and a low-noise expert with the boundary at 0.875, Wan2.1 VAE. Its
    blocks are 20 wide (not the other test models' 24), so a LoRA for one test layout does not fit the other."""
    from diffusers import WanPipeline

    pipe = WanPipeline(
        **_wan21_shared_parts(),
        scheduler=_scheduler(3.0),
        transformer=_transformer(16, heads=2, head_dim=10),
        transformer_2=_transformer(16, heads=2, head_dim=10),
        boundary_ratio=0.875,
    )
    _save(pipe, folder, TEST_TINY_A14B)


def build_i2v_a14b(folder: Path) -> None:
    """Wan2.2 I2V-A14B layout: image-to-video without expand_timesteps (the picture and an optional end frame
    are VAE-encoded and concatenated with a mask: 16 + 4 + 16 input channels), two experts, no image encoder."""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(
        **_wan21_shared_parts(),
        scheduler=_scheduler(5.0),
        transformer=_transformer(16, heads=2, head_dim=10, in_channels=36),
        transformer_2=_transformer(16, heads=2, head_dim=10, in_channels=36),
        boundary_ratio=0.9,
    )
    _save(pipe, folder, TEST_TINY_I2V_A14B)


_BUILDERS = {
    TEST_TINY: build_ti2v, TEST_TINY_WAN21: build_wan21, TEST_TINY_A14B: build_a14b,
    TEST_TINY_I2V_A14B: build_i2v_a14b,
}  # fmt: skip


# ---- Full-size architectures with random weights, for speed and memory benchmarks on a GPU ----------------
# The published diffusers configs of the real repositories (architecture fields only). Random weights cost
# the same compute and memory as the real ones, and need no download.
_UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)  # fmt: skip
_TRANSFORMER_COMMON = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
# The Wan2.1 VAE, shared by the A14B pair and the 1.3B model.
_WAN21_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]
)
FULL_SIZE_LAYOUTS = {
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": dict(
        transformer=dict(num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30),
        experts=1,
        vae=dict(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            temperal_downsample=[False, True, True],
            is_residual=True,
            patch_size=2,
            in_channels=12,
            out_channels=12,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
        ),  # fmt: skip
        pipeline=dict(expand_timesteps=True),
    ),
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": dict(
        transformer=dict(num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40),
        experts=2,
        vae=_WAN21_VAE,
        pipeline=dict(boundary_ratio=0.875),
    ),
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": dict(
        transformer=dict(num_attention_heads=40, in_channels=36, out_channels=16, ffn_dim=13824, num_layers=40),
        experts=2,
        vae=_WAN21_VAE,
        pipeline=dict(boundary_ratio=0.9),
    ),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": dict(
        transformer=dict(num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960, num_layers=30),
        experts=1,
        vae=_WAN21_VAE,
        pipeline=dict(),
    ),
}


def full_size_components(model_id: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> dict:
    """The real model's modules with random weights (VAE in float32, as the pipeline runs it)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    layout = FULL_SIZE_LAYOUTS[model_id]
    z_dim = layout["vae"]["z_dim"]
    with torch.device(device):
        transformers = [
            _cast_as_loaded(WanTransformer3DModel(**_TRANSFORMER_COMMON, **layout["transformer"]), dtype)
            for _ in range(layout["experts"])
        ]
        text_encoder = UMT5EncoderModel(UMT5Config(**_UMT5_XXL)).to(dtype)
        vae = AutoencoderKLWan(**layout["vae"], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    return {
        "transformer": transformers[0],
        "transformer_2": transformers[1] if len(transformers) > 1 else None,
        "text_encoder": text_encoder.eval(),
        "vae": vae.eval(),
        **layout["pipeline"],
    }


def _cast_as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast as from_pretrained loads it: the modules the class keeps in float32 (norms, rope, time embedding)
    stay float32, everything else goes to `dtype`."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor.data = tensor.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


def full_size_pipeline(model_id: str, flow_shift: float, device: str = "cpu"):
    """A full-size random-weight pipeline built in memory, on `device` (a GPU builds it in seconds; nothing is
    saved or read back). The tokenizer is this module's small one with the real vocabulary size's ids left
    unused: token ids never exceed it, so the compute is the real model's."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    torch.manual_seed(0)
    parts = full_size_components(model_id, device=device)
    cls = WanImageToVideoPipeline if "I2V" in model_id else WanPipeline
    return cls(tokenizer=_tokenizer(), scheduler=_scheduler(flow_shift), **parts)


def build_full_size_random(model_id: str, folder: Path, flow_shift: float) -> Path:
    """Save a full-size random-weight copy of a catalogue model as a diffusers folder (bf16, tens of GB)."""
    if (folder / "model_index.json").is_file():
        return folder
    pipe = full_size_pipeline(model_id, flow_shift)
    folder.mkdir(parents=True, exist_ok=True)
    _save(pipe, folder, model_id)
    return folder


# ---- LoRAs and fast presets for the test models -------------------------------------------------------
LORA_LAYERS = {  # diffusers name -> (Wan/ComfyUI name, Kohya name) of every linear layer a Wan LoRA targets
    "attn1.to_q": ("self_attn.q", "self_attn_q"), "attn1.to_k": ("self_attn.k", "self_attn_k"),
    "attn1.to_v": ("self_attn.v", "self_attn_v"), "attn1.to_out.0": ("self_attn.o", "self_attn_o"),
    "attn2.to_q": ("cross_attn.q", "cross_attn_q"), "attn2.to_k": ("cross_attn.k", "cross_attn_k"),
    "attn2.to_v": ("cross_attn.v", "cross_attn_v"), "attn2.to_out.0": ("cross_attn.o", "cross_attn_o"),
    "ffn.net.0.proj": ("ffn.0", "ffn_0"), "ffn.net.2": ("ffn.2", "ffn_2"),
}  # fmt: skip


def lora_weights(transformer, rank: int = 4, seed: int = 0, scale: float = 0.05, zero_up: bool = False) -> dict:
    """Random LoRA matrices for every targeted layer of `transformer`: {(block, diffusers layer): (down, up)}."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for block_index, block in enumerate(transformer.blocks):
        for name in LORA_LAYERS:
            linear = block.get_submodule(name)
            down = torch.randn(rank, linear.in_features, generator=g) * scale
            up = (
                torch.zeros(linear.out_features, rank)
                if zero_up
                else torch.randn(linear.out_features, rank, generator=g) * scale
            )
            weights[block_index, name] = (down, up)
    return weights


def save_lora(weights: dict, path: Path, layout: str = "diffusers", alpha: float | None = None) -> Path:
    """Write LoRA matrices as a .safetensors file in one of the layouts Wan LoRAs come in: "diffusers"
    (PEFT keys, alpha = rank), "comfyui" (lightx2v/ComfyUI: diffusion_model.*, lora_down/up, .alpha) or
    "kohya" (musubi: lora_unet_*, .alpha). `alpha` (comfyui, kohya) defaults to the rank."""
    from safetensors.torch import save_file

    tensors = {}
    for (block, name), (down, up) in weights.items():
        rank = down.shape[0]
        comfy, kohya = LORA_LAYERS[name]
        if layout == "diffusers":
            tensors[f"transformer.blocks.{block}.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"transformer.blocks.{block}.{name}.lora_B.weight"] = up.contiguous()
            continue
        stem = f"diffusion_model.blocks.{block}.{comfy}" if layout == "comfyui" else f"lora_unet_blocks_{block}_{kohya}"
        tensors[f"{stem}.lora_down.weight"] = down.contiguous()
        tensors[f"{stem}.lora_up.weight"] = up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def ensure_fast_test_weights(model_id: str):
    """The test models' fast presets, built once: a distilled checkpoint (random weights) for test-tiny,
    step-distillation LoRAs for the Wan2.1 and A14B layouts."""
    from diffusers import WanTransformer3DModel

    from pipelines.catalogue import CATALOGUE

    folder = cache_root() / f"fast-v{BUILD_VERSION}"
    base = ensure_test_model(model_id)
    preset = CATALOGUE[model_id].fast
    if preset.transformer_repo:
        target = folder / preset.transformer_repo.split(":", 1)[1]
        if not (target / "transformer" / "config.json").is_file():
            torch.manual_seed(1)
            model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(base / "transformer"))
            model.save_pretrained(target / "transformer", safe_serialization=True)
        return FastWeights(target, ())
    loras = []
    for n, lora in enumerate(preset.loras):
        path = folder / lora.file
        if not path.is_file():
            component = "transformer_2" if lora.experts == "low" else "transformer"
            model = WanTransformer3DModel.from_pretrained(base / component)
            save_lora(lora_weights(model, seed=10 + n), path)
        loras.append((path, lora.experts))
    return FastWeights(None, tuple(loras))
