"""The prompt enhancer: a small local language model rewrites a short idea into the detailed, one-paragraph
prompt the Wan models were trained on, which the user then reads and edits before generating.

Wan's own prompt extension (wan/utils/prompt_extend.py in Wan2.2) rewrites a prompt into one paragraph that
keeps the user's subject and action and adds how they look, the background, how the motion unfolds, the shot and
the light; a five-word prompt leaves the video model to guess all of that. It runs Qwen2.5 models (text) and
Qwen2.5-VL models (with the start picture); the catalogue here offers their 3B sizes (6 to 8 GB in bf16), small
enough for any card that runs Wan and usable, slowly, on a CPU. The instructions (`SYSTEM_PROMPT`) are this
project's own, written from what Wan's prompt-extension instructions ask of a good prompt.

Models load through transformers' `from_pretrained` from a folder: the Hugging Face cache (downloaded through
`pipelines.weights.download`, with its progress report and its offline message), a local folder, or a tiny
random-weight test model built on this machine (`ensure_test_enhancer`), so every path runs in the tests without
the Hub. The enhancer is meant to be loaded for a job and closed afterwards (`Enhancer.close`), so it never holds
GPU memory a generation needs.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from pipelines.errors import UserError
from pipelines.testmodels import cache_root

if TYPE_CHECKING:
    from PIL import Image

# (fraction 0..1, message) -> None, as pipelines.weights.DownloadCallback
ProgressCallback = Callable[[float, str], None]
EnhancerKind = Literal["text", "vision"]


class EnhanceError(UserError, ValueError):
    """A prompt-enhancing request that cannot be done; the message says what to do instead."""


class EnhanceCancelled(Exception):
    """The caller's cancel event was set: before generation, or during it (within a token)."""


# --------------------------------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class EnhancerSpec:
    """One enhancer model: what Settings lists, and where its files come from."""

    id: str
    repo: str  # Hugging Face repository; "" for a test model
    name: str  # shown in Settings and in every message about this model
    kind: EnhancerKind  # "vision" models also look at the start picture
    licence: str
    size_gb: float  # approximate download
    is_test: bool = False


QWEN25_3B = EnhancerSpec(
    id="qwen2.5-3b-instruct",
    repo="Qwen/Qwen2.5-3B-Instruct",
    name="Qwen2.5-3B-Instruct",
    kind="text",
    licence="Qwen Research License (non-commercial use)",
    size_gb=6.2,
)
QWEN25_VL_3B = EnhancerSpec(
    id="qwen2.5-vl-3b-instruct",
    repo="Qwen/Qwen2.5-VL-3B-Instruct",
    name="Qwen2.5-VL-3B-Instruct",
    kind="vision",
    licence="Qwen Research License (non-commercial use)",
    size_gb=7.5,
)
TEST_ENHANCER = EnhancerSpec(
    id="test-enhancer", repo="", name="Test enhancer (random weights)", kind="text", licence="test only",
    size_gb=0.0, is_test=True,
)  # fmt: skip
TEST_ENHANCER_VL = EnhancerSpec(
    id="test-enhancer-vl", repo="", name="Test vision enhancer (random weights)", kind="vision",
    licence="test only", size_gb=0.0, is_test=True,
)  # fmt: skip

ENHANCERS: dict[str, EnhancerSpec] = {s.id: s for s in (QWEN25_3B, QWEN25_VL_3B, TEST_ENHANCER, TEST_ENHANCER_VL)}
DEFAULT_TEXT_ENHANCER = QWEN25_3B.id
DEFAULT_VISION_ENHANCER = QWEN25_VL_3B.id
# What is fetched of a repository: weights, configs, tokenizer and chat template (no README, LICENSE, ONNX, …).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]


def enhancer_spec(enhancer_id: str) -> EnhancerSpec:
    """The catalogue entry for an id; EnhanceError listing the choices for an unknown one (a stale setting)."""
    try:
        return ENHANCERS[enhancer_id]
    except KeyError:
        known = ", ".join(s.id for s in ENHANCERS.values() if not s.is_test)
        raise EnhanceError(f"'{enhancer_id}' is not a prompt enhancer here: choose one of {known}.") from None


# ------------------------------------------------------------------------------------------------ instructions

SYSTEM_PROMPT = (
    "You turn a short idea into a prompt for a video generation model. Keep what the user asked for: the same "
    "subjects, the same action, and any style, camera move or detail they named; add no people, animals or "
    "objects the scene does not need. Write one flowing paragraph of 80 to 120 words in plain present-tense "
    "sentences that covers, in this order: the main subject and how it looks (appearance, clothing, expression, "
    "pose); the setting and its background details; the motion from start to end, step by step (if the idea has "
    "no action, give the subject a small natural one, and let the background move too, such as drifting clouds "
    "or leaves in the wind); the camera (shot size, angle and at most one movement, such as a slow push-in, a pan "
    "or a tracking shot); and the light (time of day, where the light comes from, soft or hard, warm or cool "
    "colours). If the user named a style, such as anime, watercolour or a 3D render, open the paragraph with it; "
    "otherwise describe a realistic, cinematic shot and do not invent a style. Describe only what can be seen "
    "within a few seconds: no sounds, no comments on mood or meaning, no text on screen unless asked. Reply with "
    "the prompt alone: no title, no list, no quotation marks, no words before or after it."
)
LANGUAGE_ENGLISH = "Write the prompt in English, translating the user's idea if it is in another language."
LANGUAGE_KEEP = "Write the prompt in the same language as the user's idea; do not translate it."
IMAGE_INSTRUCTIONS = (
    "The user also gives a picture: it is the first frame of the video. Begin with one or two sentences that "
    "describe what the picture shows (the main subject, the setting, the style and the light as they are in it), "
    "then give the rest of the paragraph to what moves from that frame on and how the camera moves. Stay "
    "consistent with the picture and add nothing that contradicts it."
)
USER_TEMPLATE = "Rewrite this idea as a video prompt:\n\n{prompt}"


def system_prompt(keep_language: bool = False, with_image: bool = False) -> str:
    """The whole system message: `SYSTEM_PROMPT`, the language rule, and the picture rule when there is one.
    English by default, as Wan's own prompt rewriter answers in English (or Chinese) whatever language it is
    given; keeping the user's language is a setting."""
    parts = [SYSTEM_PROMPT, LANGUAGE_KEEP if keep_language else LANGUAGE_ENGLISH]
    if with_image:
        parts.append(IMAGE_INSTRUCTIONS)
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- output cleaner

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_POLITE = re.compile(r"^(?:sure|okay|ok|certainly|of course|absolutely)\s*[,.!:]+\s*", re.I)
_PREAMBLE = re.compile(
    r"^[*#_\s]*(?:here(?:'s|\u2019s| is| are)\b[^:\n]{0,80}"
    r"|(?:the\s+|an?\s+|my\s+)?(?:enhanced|rewritten|improved|expanded|refined|final|new|detailed)\s+"
    r"(?:video\s+)?(?:prompt|version|description)"
    r"|(?:video\s+)?prompt)\s*[*_]*\s*:\s*[*_]*",
    re.I,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"),
           ("\u300c", "\u300d"), ("`", "`"), ("**", "**")]  # fmt: skip
_NOTE = re.compile(r"^\(?\s*(?:note|notes|explanation|word count)\b", re.I)


def clean_output(text: str) -> str:
    """The model's reply as one paragraph of prompt: reasoning (`<think>…</think>`, or everything before a lone
    `</think>`), politeness and preambles ("Sure! Here is the enhanced prompt:"), surrounding quotes or bold, and
    trailing notes are removed, and the lines are joined. Small models add these despite being told not to, and
    the user should see only what would be sent to the video model."""
    text = _THINK.sub("", text)
    if "</think>" in text.lower():  # the opening tag was in the template, or cut
        text = re.split(r"</think>", text, flags=re.I)[-1]
    text = re.sub(r"<think>.*", "", text, flags=re.S | re.I)  # reasoning cut off by the token limit
    text = text.strip()
    for _ in range(3):  # "Sure! Here's the prompt:", "**Enhanced prompt:**", …
        before = text
        text = _PREAMBLE.sub("", _POLITE.sub("", text, count=1), count=1).strip()
        if text == before:
            break
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paragraphs) > 1 and _NOTE.match(paragraphs[-1]):
        paragraphs.pop()
    text = " ".join(" ".join(paragraphs).split())
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in _QUOTES:
            if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
                inner = text[len(left) : len(text) - len(right)]
                if right + " " not in inner:  # not '"a" and "b"' (an apostrophe is followed by a letter)
                    text, changed = inner.strip(), True
    return text


def _cut_to_sentence(text: str) -> str:
    """A reply stopped by the token limit ends mid-sentence: keep it up to its last full sentence, when that
    keeps at least half of it (else the whole, which the user can finish by hand)."""
    ends = [m.end() for m in re.finditer(r"[.!?\u3002\uff01\uff1f](?=\s|$)", text)]
    if ends and ends[-1] >= len(text) // 2:
        return text[: ends[-1]]
    return text


# ---------------------------------------------------------------------------------------------------- the model


def _stop_on(event: threading.Event):
    """A transformers StoppingCriteriaList that stops generation once `event` is set. `generate` asks it after
    every new token, so a cancel ends generation within one token. (Built here, not at import: transformers is
    imported only when an enhancer is used.)"""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnEvent()])


# Qwen2.5's published sampling settings (its generation_config.json), fixed here so that a given seed gives the
# same text whatever the model folder's own generation_config says.
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
# The picture is shrunk to at most this many pixels before the processor sees it: enough for a description
# (about 256 visual tokens at Qwen2.5-VL's 28-pixel merged patches), and fast on a CPU.
MAX_IMAGE_PIXELS = 448 * 448


def choose_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA where the card has it (the Qwen weights are published in bf16; fp16 can overflow in
    their activations), float16 on older cards, float32 elsewhere: CPUs are slow or inexact in half precision."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Enhancer:
    """A loaded enhancer model with its tokenizer (text) or processor (vision) on one device. `enhance` is
    serialised by a lock; `close` frees the weights (and the CUDA cache) so a generation can have the memory."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,  # a transformers tokenizer (the processor's, for vision models)
        processor: Any | None,  # a transformers processor for vision models, else None
        kind: EnhancerKind,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.kind, self.name, self.device, self.dtype = kind, name, device, dtype
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def messages(self, prompt: str, with_image: bool, keep_language: bool) -> list[dict]:
        """The chat sent to the model: our system message, then the user's idea (after the picture, when given).
        Vision processors take content as a list of parts; text tokenizers' templates take plain strings."""
        system = system_prompt(keep_language=keep_language, with_image=with_image)
        user = USER_TEMPLATE.format(prompt=prompt.strip())
        if self.kind == "vision":
            parts = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": user}]
            return [{"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": parts}]  # fmt: skip
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def render(self, prompt: str, with_image: bool = False, keep_language: bool = False) -> str:
        """The chat as the model reads it (the chat template applied, the assistant's turn opened)."""
        templater = self.processor if self.kind == "vision" else self.tokenizer
        return templater.apply_chat_template(
            self.messages(prompt, with_image, keep_language), tokenize=False, add_generation_prompt=True
        )

    def enhance(
        self,
        prompt: str,
        image: Image.Image | None = None,
        keep_language: bool = False,
        seed: int = 0,
        max_new_tokens: int = 200,
        cancel: threading.Event | None = None,
    ) -> str:
        """The prompt rewritten as one paragraph. Seeded sampling with Qwen2.5's published settings: the same
        prompt, picture and seed on the same device and model give the same text, another seed another
        rewrite (pressing Enhance again offers a new one). EnhanceError for an empty prompt, for a picture given
        to a text-only model, and for an empty reply; EnhanceCancelled when `cancel` is set, before or during
        generation (checked after every token)."""
        if not prompt or not prompt.strip():
            raise EnhanceError("Type a prompt to enhance first.")
        if image is not None and self.kind != "vision":
            raise EnhanceError(
                f"Enhancing with a picture needs a vision-language model, and {self.name} reads text only: "
                f"choose a vision enhancer ({QWEN25_VL_3B.name}) in Settings, or enhance without the picture."
            )
        if not self.loaded:
            raise RuntimeError("this enhancer was closed")
        cancel = cancel or threading.Event()
        if cancel.is_set():
            raise EnhanceCancelled()
        with self._lock:
            text = self.render(prompt, with_image=image is not None, keep_language=keep_language)
            if self.kind == "vision":
                images = [_fit_image(image)] if image is not None else None
                inputs = self.processor(text=[text], images=images, return_tensors="pt")
            else:
                inputs = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            tokenizer = self.tokenizer
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else []  # fmt: skip
            with torch.random.fork_rng(devices=devices), torch.inference_mode():  # the caller's RNG is kept
                torch.manual_seed(seed)
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    stopping_criteria=_stop_on(cancel),
                    pad_token_id=pad,
                    **SAMPLING,
                )
            if cancel.is_set():
                raise EnhanceCancelled()
            new = output[0, inputs["input_ids"].shape[1] :]
            eos = self.model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            finished = len(new) > 0 and int(new[-1]) in eos
            reply = tokenizer.decode(new, skip_special_tokens=True)
        result = clean_output(reply)
        if not finished:
            result = _cut_to_sentence(result)
        if not result:
            raise EnhanceError(f"{self.name} gave no prompt back. Try again with another seed, or edit by hand.")
        return result

    def close(self) -> None:
        """Free the model: weights dropped, garbage collected, and CUDA's cached blocks returned, so the memory
        shows as free to the next generation (and to other processes)."""
        on_cuda = self.device.type == "cuda"
        self.model = self.tokenizer = self.processor = None
        gc.collect()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    unload = close

    def __enter__(self) -> Enhancer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fit_image(image: Image.Image) -> Image.Image:
    """RGB, shrunk (never enlarged) to at most MAX_IMAGE_PIXELS with its aspect kept."""
    image = image.convert("RGB")
    area = image.width * image.height
    if area > MAX_IMAGE_PIXELS:
        scale = (MAX_IMAGE_PIXELS / area) ** 0.5
        image = image.resize((max(28, round(image.width * scale)), max(28, round(image.height * scale))))
    return image


def fetch_enhancer(spec: EnhancerSpec, offline: bool, on_progress: ProgressCallback | None = None) -> Path:
    """The folder of an enhancer's files: built for a test model, else the Hugging Face cache (downloaded on first
    use with the byte progress report). Separate from loading so a job can fetch before it takes the GPU.
    ModelUnavailableError naming the model and what to do when it is missing offline or cannot be fetched."""
    if spec.is_test:
        return ensure_test_enhancer(spec.kind)
    from pipelines.weights import download

    return download(spec.repo, f"The prompt enhancer {spec.name} ({spec.repo})", offline, on_progress,
                    allow_patterns=ALLOW_PATTERNS).path  # fmt: skip


def load_enhancer(
    spec_or_path: EnhancerSpec | str | Path,
    device: str | torch.device = "cpu",
    offline: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Enhancer:
    """Load an enhancer onto `device` (bf16/fp16 on CUDA, float32 elsewhere): a catalogue entry or id (fetched
    first, see `fetch_enhancer`) or a local model folder, whose config says whether it is a vision model. Every
    source goes through `from_pretrained`, the test models included."""
    if isinstance(spec_or_path, str) and spec_or_path in ENHANCERS:
        spec_or_path = ENHANCERS[spec_or_path]
    if isinstance(spec_or_path, EnhancerSpec):
        folder, name, kind = fetch_enhancer(spec_or_path, offline, on_progress), spec_or_path.name, spec_or_path.kind
    else:
        folder = Path(spec_or_path)
        config = folder / "config.json"
        if not config.is_file():
            raise EnhanceError(f"'{folder}' is not a model folder (it has no config.json).")
        name = folder.name
        kind = "vision" if "vision_config" in json.loads(config.read_text()) else "text"
    device = torch.device(device)
    dtype = choose_dtype(device)
    if device.type == "cpu":
        check_ram(folder, name, dtype)
    report = on_progress or (lambda fraction, message: None)
    report(1.0, f"Loading {name}")
    try:
        if kind == "vision":
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(folder)
            tokenizer = processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            processor = None
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as err:
        raise EnhanceError(f"{name} could not be loaded from {folder}: {err}") from err
    model.to(device).eval()
    return Enhancer(model, tokenizer, processor, kind, name, device, dtype)


def check_ram(folder: Path, name: str, dtype: torch.dtype) -> None:
    """Refuse before loading on the CPU when the free RAM cannot hold the model in `dtype` (a 3B model is stored
    in bf16, about 6 GB, and becomes about 12 GB in float32): the OS would otherwise kill the studio."""
    from pipelines.memory import available_ram_gb

    stored = sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors"))
    need = stored * (torch.finfo(dtype).bits / 16) / 2**30 + 0.5  # stored as 16-bit; the runtime's own margin
    free = available_ram_gb()
    if free < need:
        raise EnhanceError(f"{name} needs about {need:.1f} GB of free memory on the CPU ({dtype}); {free:.1f} GB "
                           "is free. Close other programs, or untick 'Run the enhancer on the CPU' in Settings › "
                           "Prompt enhancer to run it on the GPU.")  # fmt: skip


# --------------------------------------------------------------------------------------------- test enhancers

# Bump when the test models' layout changes, so cached folders are rebuilt.
TEST_BUILD_VERSION = 1
# Weights drawn wider than a trained model's init, so the tiny model's next-token choice depends on its input
# (the prompt, the picture) and not only on the sampler's random draws.
_TEST_INIT = 0.5
_MARKER = "wan_studio_test_model.json"
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
# ChatML, as Qwen's templates render it; content is a string or a list of text and image parts.
TEST_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def _test_tokenizer():
    """A byte-level BPE (the kind Qwen uses, so any language and any byte round-trips) trained here on our own
    instructions and a few prompts, with Qwen's special tokens and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [SYSTEM_PROMPT, LANGUAGE_ENGLISH, LANGUAGE_KEEP, IMAGE_INSTRUCTIONS, USER_TEMPLATE,
              "A red fox runs through snow at dawn, the camera tracking low beside it in soft golden light.",
              "Un chat dort sur le rebord de la fenêtre pendant que la pluie tombe.",
              "Ein Hund läuft am Strand. 海边的小狗在奔跑。"]  # fmt: skip
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=TEST_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )  # fmt: skip


def _eos_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def build_test_enhancer(folder: Path, kind: EnhancerKind = "text", seed: int = 0) -> Path:
    """A random-weight Qwen2 (text) or Qwen2.5-VL (vision) of a few hundred thousand parameters, with the
    tokenizer above (and, for vision, Qwen2-VL's image processor set to tiny pictures), saved with
    save_pretrained into `folder`: the same files and loading path as the real models. Its output is gibberish
    from a 512-token vocabulary; what it tests is everything around the model."""
    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _test_tokenizer()
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "tie_word_embeddings": True, "eos_token_id": _eos_ids(tokenizer)[0],
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "initializer_range": _TEST_INIT}  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        if kind == "vision":
            from transformers import (
                Qwen2_5_VLConfig,
                Qwen2_5_VLForConditionalGeneration,
                Qwen2_5_VLProcessor,
                Qwen2VLImageProcessor,
                Qwen2VLVideoProcessor,
            )

            ids = tokenizer.convert_tokens_to_ids
            config = Qwen2_5_VLConfig(
                text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                         "mrope_section": [1, 1, 2]}},
                vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                               "out_hidden_size": 32, "fullatt_block_indexes": [1], "window_size": 56,
                               "initializer_range": _TEST_INIT},
                image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                tie_word_embeddings=True, bos_token_id=None, initializer_range=_TEST_INIT,
            )  # fmt: skip
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
            pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
            processor = Qwen2_5_VLProcessor(
                image_processor=Qwen2VLImageProcessor(**pixels),
                video_processor=Qwen2VLVideoProcessor(**pixels),
                tokenizer=tokenizer,
                chat_template=TEST_CHAT_TEMPLATE,
            )
            processor.save_pretrained(folder)
        else:
            from transformers import Qwen2Config, Qwen2ForCausalLM

            model = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
            tokenizer.save_pretrained(folder)
    model.generation_config = GenerationConfig(eos_token_id=_eos_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / _MARKER).write_text(
        json.dumps({"model": f"test-enhancer-{kind}", "build_version": TEST_BUILD_VERSION, "weights": "random"})
    )
    return folder


def ensure_test_enhancer(kind: EnhancerKind = "text") -> Path:
    """The test enhancer's folder in the test models' cache, built the first time (into a staging folder renamed
    into place, so a concurrent builder or an interrupted build never leaves half a model)."""
    if kind not in ("text", "vision"):
        raise ValueError(f"no test enhancer of kind {kind!r}")
    name = "test-enhancer" if kind == "text" else "test-enhancer-vl"
    folder = cache_root() / f"{name}-v{TEST_BUILD_VERSION}"
    if (folder / _MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        build_test_enhancer(staging, kind)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
