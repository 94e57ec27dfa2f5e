"""The models Wan Studio knows: real hub repositories with their published defaults, plus local test models.

Defaults follow the Wan2.2 team's own configs (wan/configs in Wan-Video/Wan2.2). Memory figures are
estimates in GB for the model's default size; `pipelines.memory` scales them and the benchmark
(`bench/bench_generate.py`) measures the real ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.errors import UserError

TEXT_TO_VIDEO = "t2v"
IMAGE_TO_VIDEO = "i2v"
TASK_NAMES = {TEXT_TO_VIDEO: "text-to-video", IMAGE_TO_VIDEO: "image-to-video"}

# The Wan team's default negative prompt (Chinese, as the models were trained with it).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# What it says, for the people who see it in the form (Wan was trained with Chinese negative prompts).
WAN_NEGATIVE_PROMPT_GLOSS = (
    "garish colours, overexposed, static, blurry details, subtitles, style, artwork, painting, still frame, "
    "greyish overall, worst quality, low quality, JPEG artefacts, ugly, mutilated, extra fingers, badly drawn "
    "hands, badly drawn faces, deformed, disfigured, malformed limbs, fused fingers, motionless picture, "
    "cluttered background, three legs, crowded background, walking backwards"
)


@dataclass(frozen=True)
class WeightSizes:
    """Approximate resident sizes in GB, used to pick a memory profile before anything loads."""

    transformer_gb: float  # one expert, bf16
    experts: int  # 2 for the A14B high-noise/low-noise pair
    text_encoder_gb: float  # UMT5-XXL encoder, bf16
    vae_gb: float  # float32, as the pipeline runs it
    activations_gb: float  # denoising working set at the model's default size and frame count
    vae_decode_gb: float  # untiled VAE decode working set at the default size and frame count


def shifted(sigma: float, shift: float) -> float:
    """The flow-matching time shift the Wan schedulers apply: more steps spent at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class HubFile:
    """One pinned file on the Hugging Face Hub (a post-production model's weights): fetched at `revision` and
    refused unless its SHA-256 is `sha256`, so what runs is exactly what was reviewed."""

    repo: str
    revision: str  # a commit id, never a branch
    filename: str
    sha256: str
    name: str  # what the page calls it
    licence: str


@dataclass(frozen=True)
class FastLora:
    """A step-distillation LoRA of a fast preset: a file in a hub repository (or built here for a test model)."""

    repo: str | None
    file: str
    experts: str = "both"  # "high", "low" or "both" (the A14B pair)


@dataclass(frozen=True)
class FastWeights:
    """A fast preset's files on this machine."""

    transformer: Path | None  # a distilled checkpoint's folder holding transformer/ (and transformer_2/)
    loras: tuple[tuple[Path, str], ...]  # (file, experts) of its step-distillation LoRAs


@dataclass(frozen=True)
class FastPreset:
    """Published step-distilled weights for a model family, with the settings their authors prescribe."""

    label: str
    source: str  # where the ids and settings come from
    sigmas: tuple[float, ...]  # noise level of each step (the timestep is 1000 x sigma); their count is the steps
    stochastic: bool  # DMD sampling: each step predicts the clean video and re-noises it; else Euler steps
    transformer_repo: str | None = None  # a distilled checkpoint: its transformer(s) replace the base model's
    loras: tuple[FastLora, ...] = ()  # or step-distillation LoRAs on the base model
    guidance_scale: float = 1.0  # distilled without CFG: one transformer call per step

    @property
    def steps(self) -> int:
        return len(self.sigmas)


# FastVideo's DMD sampling (fastvideo/configs/pipelines/wan.py, FastWan2_2_TI2V_5B_Config and
# FastWan2_1_T2V_480P_Config: dmd_denoising_steps [1000, 757, 522]; fastvideo's DMD denoising stage).
_DMD_3 = (1.0, 0.757, 0.522)
# lightx2v's 4-step schedule for the Wan2.2-Lightning LoRAs: denoising_step_list [1000, 750, 500, 250] on the
# shift-5 table, Euler steps between them (lightx2v Wan22StepDistillScheduler; ModelTC/Wan2.2-Lightning:
# "4 steps without the need of CFG").
_LIGHTNING_4 = tuple(shifted(s, 5.0) for s in (1.0, 0.75, 0.5, 0.25))


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    tasks: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) presets; the first is the default
    frames: int
    fps: int
    steps: int
    guidance_scale: float
    flow_shift: float
    size_multiple: int  # VAE spatial factor x transformer patch size
    weights: WeightSizes
    license: str
    description: str
    repo: str | None = None  # hub repository; None for local folders
    local_path: str | None = None
    guidance_scale_2: float | None = None  # low-noise expert's guidance (A14B pair)
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    frame_step: int = 4  # valid frame counts are frame_step * n + 1
    min_frames: int = 5
    max_frames: int = 121
    min_side: int = 256
    max_side: int = 1920
    is_test: bool = False
    # Models with the same value here hold identical text encoder and VAE weights, so switching between
    # them keeps those loaded.
    shared_components: str = field(default="")
    transformer_width: int = 0  # hidden size of the transformer blocks: what a LoRA must have been made for
    family: str = ""  # what LoRAs and fast presets are made for, named for people ("Wan2.2 TI2V-5B")
    fast: FastPreset | None = None  # the Fast mode of this model, when step-distilled weights are published
    # Image-to-video with an end frame too: diffusers' WanImageToVideoPipeline takes `last_image` for the A14B
    # layout (it is VAE-encoded into the last latent frame), and ignores it with expand_timesteps (TI2V-5B).
    end_frame: bool = False
    attention_heads: int = 0  # of each transformer block: a context-parallel degree must divide it (0: unknown)

    @property
    def default_size(self) -> tuple[int, int]:
        return self.sizes[0]

    @property
    def label(self) -> str:
        return f"{self.name} [TEST MODEL, random weights]" if self.is_test else self.name

    @property
    def two_experts(self) -> bool:
        """The A14B layout: a high-noise `transformer` and a low-noise `transformer_2`."""
        return self.weights.experts == 2

    def task_overlap(self, other: ModelSpec) -> bool:
        """Whether `other` makes some of the same kinds of clip (a stand-in suggestion)."""
        return bool(set(self.tasks) & set(other.tasks))

    def supports(self, task: str) -> bool:
        return task in self.tasks


_TI2V_5B = ModelSpec(
    id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    name="Wan2.2 TI2V-5B (720P, text & image to video)",
    tasks=(TEXT_TO_VIDEO, IMAGE_TO_VIDEO),
    sizes=((1280, 704), (704, 1280), (960, 544), (544, 960), (832, 480), (480, 832)),
    frames=121,
    fps=24,
    steps=50,
    guidance_scale=5.0,
    flow_shift=5.0,
    size_multiple=32,
    max_frames=121,
    weights=WeightSizes(
        transformer_gb=10.0, experts=1, text_encoder_gb=11.4, vae_gb=2.8, activations_gb=4.0, vae_decode_gb=8.0
    ),
    license="Apache-2.0",
    description="One 5B model for both tasks; 720P on a 24 GB card. The default.",
    shared_components="wan22-5b",
    transformer_width=3072,
    attention_heads=24,
    family="Wan2.2 TI2V-5B",
    fast=FastPreset(
        label="FastWan2.2-TI2V-5B (3 steps, DMD)",
        source="huggingface.co/FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers: 3-step inference at 121x704x1280; "
        "steps and sampling from FastVideo's FastWan2_2_TI2V_5B_Config",
        sigmas=_DMD_3,
        stochastic=True,
        transformer_repo="FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers",
    ),
)

_T2V_A14B = ModelSpec(
    id="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    repo="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    name="Wan2.2 T2V-A14B (two experts, 480P/720P)",
    tasks=(TEXT_TO_VIDEO,),
    sizes=((832, 480), (480, 832), (1280, 720), (720, 1280)),
    frames=81,
    fps=16,
    steps=40,
    guidance_scale=3.0,
    guidance_scale_2=4.0,
    flow_shift=12.0,
    size_multiple=16,
    max_frames=81,
    weights=WeightSizes(
        transformer_gb=28.6, experts=2, text_encoder_gb=11.4, vae_gb=0.5, activations_gb=5.0, vae_decode_gb=4.0
    ),
    license="Apache-2.0",
    description="High-noise and low-noise 14B experts. Needs fp8 and offload on a 24 GB card.",
    shared_components="wan21-vae-umt5",
    transformer_width=5120,
    attention_heads=40,
    family="Wan2.2 A14B / Wan2.1 14B",
    fast=FastPreset(
        label="Wan2.2-Lightning (4 steps, LoRA pair)",
        source="huggingface.co/lightx2v/Wan2.2-Lightning, Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1 (ModelTC/"
        "Wan2.2-Lightning README: 4 steps without CFG; schedule from lightx2v's Wan22StepDistillScheduler)",
        sigmas=_LIGHTNING_4,
        stochastic=False,
        loras=(
            FastLora(
                "lightx2v/Wan2.2-Lightning",
                "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/high_noise_model.safetensors",
                "high",
            ),
            FastLora(
                "lightx2v/Wan2.2-Lightning",
                "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/low_noise_model.safetensors",
                "low",
            ),
        ),  # fmt: skip
    ),
)

_I2V_A14B = replace(
    _T2V_A14B,
    id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    repo="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    name="Wan2.2 I2V-A14B (two experts, 480P/720P)",
    tasks=(IMAGE_TO_VIDEO,),
    guidance_scale=3.5,
    guidance_scale_2=3.5,
    flow_shift=5.0,
    description="Image-to-video with two 14B experts. Needs fp8 and offload on a 24 GB card.",
    end_frame=True,
    fast=FastPreset(
        label="Wan2.2-Lightning (4 steps, LoRA pair)",
        source="huggingface.co/lightx2v/Wan2.2-Lightning, Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1 (ModelTC/"
        "Wan2.2-Lightning README; schedule from lightx2v's Wan22StepDistillScheduler)",
        sigmas=_LIGHTNING_4,
        stochastic=False,
        loras=(
            FastLora(
                "lightx2v/Wan2.2-Lightning",
                "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/high_noise_model.safetensors",
                "high",
            ),
            FastLora(
                "lightx2v/Wan2.2-Lightning",
                "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/low_noise_model.safetensors",
                "low",
            ),
        ),  # fmt: skip
    ),
)

_T2V_1_3B = ModelSpec(
    id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    name="Wan2.1 T2V-1.3B (light, 480P)",
    tasks=(TEXT_TO_VIDEO,),
    sizes=((832, 480), (480, 832)),
    frames=81,
    fps=16,
    steps=50,
    guidance_scale=5.0,
    flow_shift=3.0,
    size_multiple=16,
    max_frames=81,
    weights=WeightSizes(
        transformer_gb=2.84, experts=1, text_encoder_gb=11.4, vae_gb=0.5, activations_gb=2.0, vae_decode_gb=4.0
    ),
    license="Apache-2.0",
    description="The light model for 8-12 GB cards.",
    shared_components="wan21-vae-umt5",
    transformer_width=1536,
    attention_heads=12,
    family="Wan2.1 1.3B",
    # No Fast mode: FastWan2.1-T2V-1.3B was distilled together with Video Sparse Attention (FastVideo's
    # "sparse distillation", VSA sparsity 0.8; its docs say "First install VSA"), which diffusers' Wan
    # transformer does not run; dense attention would not be the settings its authors prescribe.
)

TEST_TINY = "test-tiny"
TEST_TINY_WAN21 = "test-tiny-wan21"
TEST_TINY_A14B = "test-tiny-a14b"
TEST_TINY_I2V_A14B = "test-tiny-i2v-a14b"

_TEST_WEIGHTS = WeightSizes(
    transformer_gb=0.001, experts=1, text_encoder_gb=0.001, vae_gb=0.001, activations_gb=0.01, vae_decode_gb=0.01
)

_TEST_TI2V = ModelSpec(
    id=TEST_TINY,
    name="Tiny Wan2.2 TI2V layout",
    tasks=(TEXT_TO_VIDEO, IMAGE_TO_VIDEO),
    sizes=((96, 64), (64, 96), (64, 64)),
    frames=9,
    fps=8,
    steps=4,
    guidance_scale=5.0,
    flow_shift=5.0,
    size_multiple=32,
    max_frames=33,
    min_side=32,
    max_side=256,
    weights=_TEST_WEIGHTS,
    license="test only",
    description="Random weights built on this machine (48-channel VAE, TI2V-5B layout). Output is noise.",
    negative_prompt="blurry, static",
    is_test=True,
    transformer_width=24,
    attention_heads=2,
    family="the tiny TI2V test layout",
    fast=FastPreset(
        label="test distilled checkpoint (3 steps, DMD)",
        source="built on this machine (random weights), with FastWan's sampling",
        sigmas=_DMD_3,
        stochastic=True,
        transformer_repo="test:test-tiny-fast",
    ),
)

_TEST_WAN21 = replace(
    _TEST_TI2V,
    id=TEST_TINY_WAN21,
    name="Tiny Wan2.1 layout",
    tasks=(TEXT_TO_VIDEO,),
    sizes=((64, 48), (48, 64)),
    flow_shift=3.0,
    size_multiple=16,
    description="Random weights built on this machine (16-channel VAE, Wan2.1 layout). Output is noise.",
    transformer_width=24,
    family="the tiny Wan2.1 test layout",
    shared_components="test-wan21-vae-umt5",  # with the A14B test layouts, as the real ones (testmodels)
    fast=FastPreset(
        label="test distillation LoRA (4 steps)",
        source="built on this machine (random weights), with Lightning's schedule",
        sigmas=_LIGHTNING_4,
        stochastic=False,
        loras=(FastLora(None, "test-wan21-fast.safetensors"),),
    ),
)

_TEST_A14B = replace(
    _TEST_WAN21,
    id=TEST_TINY_A14B,
    name="Tiny Wan2.2 A14B layout (two experts)",
    guidance_scale=3.0,
    guidance_scale_2=4.0,
    weights=replace(_TEST_WEIGHTS, experts=2),
    description="Random weights built on this machine: high-noise and low-noise experts, 16-channel VAE.",
    transformer_width=20,
    family="the tiny A14B test layout",
    fast=FastPreset(
        label="test Lightning-like LoRA pair (4 steps)",
        source="built on this machine (random weights), with Lightning's schedule",
        sigmas=_LIGHTNING_4,
        stochastic=False,
        loras=(
            FastLora(None, "test-a14b-fast-high.safetensors", "high"),
            FastLora(None, "test-a14b-fast-low.safetensors", "low"),
        ),  # fmt: skip
    ),
)

_TEST_I2V_A14B = replace(
    _TEST_A14B,
    id=TEST_TINY_I2V_A14B,
    name="Tiny Wan2.2 I2V-A14B layout (two experts, end frame)",
    tasks=(IMAGE_TO_VIDEO,),
    guidance_scale=3.5,
    guidance_scale_2=3.5,
    flow_shift=5.0,
    description="Random weights built on this machine: image-to-video with a start and an end frame, two experts.",
    end_frame=True,
    fast=None,
)

CATALOGUE: dict[str, ModelSpec] = {
    spec.id: spec for spec in (
        _TI2V_5B, _T2V_A14B, _I2V_A14B, _T2V_1_3B, _TEST_TI2V, _TEST_WAN21, _TEST_A14B, _TEST_I2V_A14B,
    )
}  # fmt: skip
DEFAULT_MODEL = _TI2V_5B.id


def image_to_video_model_for(model_id: str) -> ModelSpec:
    """The model that continues a clip made by `model_id`: itself if it does image-to-video, else the
    catalogue model with the same text encoder and VAE that does (T2V-A14B -> I2V-A14B)."""
    spec = get_spec(model_id)
    if spec.supports(IMAGE_TO_VIDEO):
        return spec
    for other in CATALOGUE.values():
        if (
            other.supports(IMAGE_TO_VIDEO)
            and spec.shared_components
            and other.shared_components == spec.shared_components
        ):
            return other
    return CATALOGUE[DEFAULT_MODEL]


class UnknownModelError(UserError, ValueError):
    pass


def get_spec(model_id: str) -> ModelSpec:
    """Look a model up by catalogue id, or describe a local diffusers folder."""
    if model_id in CATALOGUE:
        return CATALOGUE[model_id]
    path = Path(os.path.expanduser(model_id))
    if (path / "model_index.json").is_file():
        return spec_for_local_folder(path)
    known = ", ".join(CATALOGUE)
    raise UnknownModelError(
        f"Unknown model '{model_id}'. Use one of: {known}, or a local folder holding a diffusers Wan model."
    )


def spec_for_local_folder(path: Path) -> ModelSpec:
    """Infer a spec for a local diffusers Wan folder from its configs, borrowing the closest catalogue defaults.

    The VAE's latent width tells Wan2.2-TI2V layouts (48 channels) from Wan2.1/A14B ones (16); a second
    transformer marks an A14B pair.
    """
    index = json.loads((path / "model_index.json").read_text())
    vae_config = json.loads((path / "vae" / "config.json").read_text())
    two_experts = bool(index.get("transformer_2") and index["transformer_2"][0])
    is_i2v = index.get("_class_name") == "WanImageToVideoPipeline"
    if vae_config.get("z_dim") == 48:
        base = _TI2V_5B
    elif two_experts:
        base = _I2V_A14B if is_i2v else _T2V_A14B
    else:
        base = _T2V_1_3B
    width = base.transformer_width
    try:
        transformer = json.loads((path / "transformer" / "config.json").read_text())
        heads = int(transformer["num_attention_heads"])
        width = heads * int(transformer["attention_head_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        heads = base.attention_heads
    return replace(
        base,
        id=str(path),
        repo=None,
        local_path=str(path),
        transformer_width=width,
        attention_heads=heads,
        fast=None,  # published distilled weights fit the published models, not a folder of unknown weights
        name=f"Local model: {path.name}",
        description=f"A diffusers folder on this machine, read with {base.name}'s defaults.",
        license="see the folder",
        shared_components="",
    )
