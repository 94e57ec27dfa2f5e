"""The prompt enhancer (pipelines/enhance.py) with random-weight Qwen2 and Qwen2.5-VL models built here: they load
through from_pretrained from their folders, the chat the model reads holds our instructions and the user's idea,
seeds repeat, the reply is cleaned to one paragraph, a cancel stops within a token, the picture reaches the vision
model, and a real model missing offline is named with what to do. The Hub is never contacted."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.enhance as enhance
from pipelines.enhance import (
    IMAGE_INSTRUCTIONS,
    LANGUAGE_ENGLISH,
    LANGUAGE_KEEP,
    SYSTEM_PROMPT,
    EnhanceCancelled,
    EnhanceError,
    clean_output,
    enhancer_spec,
    ensure_test_enhancer,
    load_enhancer,
)
from pipelines.errors import UserError
from pipelines.weights import ModelUnavailableError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from threads, and on a shared CPU they lose a lot (0.15 s against 3 s a
    rewrite here): one thread for this module, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_enhancer():
    return load_enhancer("test-enhancer")


@pytest.fixture(scope="module")
def vision_enhancer():
    return load_enhancer(ensure_test_enhancer("vision"))  # by folder: its config says it sees pictures


class Spy:
    """Wraps an enhancer's `model.generate`: records what it was given and returned, and can add logits
    processors (which run once per generated token)."""

    def __init__(self, enhancer, monkeypatch, processors=()):
        self.calls: list[dict] = []
        self.outputs: list[torch.Tensor] = []
        original = enhancer.model.generate

        def generate(**kwargs):
            self.calls.append(kwargs)
            if processors:
                kwargs["logits_processor"] = list(processors)
            out = original(**kwargs)
            self.outputs.append(out)
            return out

        monkeypatch.setattr(enhancer.model, "generate", generate)
        self.tokenizer = enhancer.tokenizer

    def chat(self) -> str:
        """The tokens the model read, decoded with their special tokens."""
        return self.tokenizer.decode(self.calls[-1]["input_ids"][0], skip_special_tokens=False)

    def new_tokens(self) -> int:
        return self.outputs[-1].shape[1] - self.calls[-1]["input_ids"].shape[1]


def picture(seed: int, width: int = 640, height: int = 360) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def test_test_enhancer_loads_through_from_pretrained_and_returns_one_paragraph(monkeypatch):
    import transformers

    folder = ensure_test_enhancer("text")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".test-enhancer")]  # no staging left
    assert ensure_test_enhancer("text") == folder  # built once
    loaded_from = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, *args, **kwargs):
        loaded_from.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    enhancer = load_enhancer("test-enhancer")
    assert loaded_from == [folder]
    assert enhancer.kind == "text" and enhancer.dtype == torch.float32 and enhancer.device.type == "cpu"
    result = enhancer.enhance("a cat on a roof")
    assert isinstance(result, str) and result.strip() == result and result
    assert "\n" not in result


def test_the_chat_holds_our_instructions_and_the_users_idea(text_enhancer, monkeypatch):
    spy = Spy(text_enhancer, monkeypatch)
    text_enhancer.enhance("a red fox runs through snow")
    chat = spy.chat()
    assert SYSTEM_PROMPT in chat and LANGUAGE_ENGLISH in chat and LANGUAGE_KEEP not in chat
    assert IMAGE_INSTRUCTIONS not in chat
    assert chat.index(SYSTEM_PROMPT) < chat.index("a red fox runs through snow")
    assert chat.endswith("<|im_start|>assistant\n")  # the model answers as the assistant

    text_enhancer.enhance("un chat dort sur la fenêtre", keep_language=True)
    chat = spy.chat()
    assert LANGUAGE_KEEP in chat and LANGUAGE_ENGLISH not in chat
    assert "un chat dort sur la fenêtre" in chat
    assert "80 to 120 words" in SYSTEM_PROMPT and "one flowing paragraph" in SYSTEM_PROMPT


def test_a_seed_repeats_its_text_and_other_seeds_sample_others(text_enhancer):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = text_enhancer.enhance("a lighthouse in a storm", seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is left alone
    assert text_enhancer.enhance("a lighthouse in a storm", seed=7) == first
    others = {text_enhancer.enhance("a lighthouse in a storm", seed=seed) for seed in range(4)}
    assert len(others) >= 3  # sampling: different seeds, different rewrites


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<think>The user wants a cat.\nOk.</think>\n\nA grey cat naps.", "A grey cat naps."),
        ("Let me think about it.</think>A grey cat naps.", "A grey cat naps."),
        ("A grey cat <think>which colour?</think>naps.", "A grey cat naps."),  # text on both sides kept
        ("A grey cat naps. <think>unfinished reasoning", "A grey cat naps."),
        ('"A grey cat naps on a sunny sill."', "A grey cat naps on a sunny sill."),
        ("\u201cA grey cat naps.\u201d", "A grey cat naps."),
        ("Enhanced prompt: A grey cat naps.", "A grey cat naps."),
        ("**Enhanced Prompt:**\n\nA grey cat naps.", "A grey cat naps."),
        ('Sure! Here is the rewritten prompt:\n"A grey cat naps."', "A grey cat naps."),
        ("Prompt: A grey cat naps.", "A grey cat naps."),
        ("A grey cat naps\non a sill.\n\nThe light is warm.", "A grey cat naps on a sill. The light is warm."),
        ("A grey cat naps.\n\nNote: I kept it under 120 words.", "A grey cat naps."),
        # left alone: quotes inside, a colon in the prompt itself, an apostrophe
        ('A sign reads "OPEN" and a cat naps.', 'A sign reads "OPEN" and a cat naps.'),
        ("Close-up: a cat's whiskers twitch.", "Close-up: a cat's whiskers twitch."),
        ("'A cat's nap'", "A cat's nap"),
    ],
)
def test_the_cleaner_leaves_only_the_prompt(reply, expected):
    assert clean_output(reply) == expected


def test_a_reply_cut_by_the_token_limit_ends_at_its_last_full_sentence():
    assert enhance._cut_to_sentence("A cat naps. The sun sets slowly. The camera pa") == (
        "A cat naps. The sun sets slowly."
    )
    assert enhance._cut_to_sentence("A cat. The long rest of the reply without an end") == (
        "A cat. The long rest of the reply without an end"  # cutting would lose more than half
    )


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_is_refused(text_enhancer, monkeypatch, prompt):
    spy = Spy(text_enhancer, monkeypatch)
    with pytest.raises(EnhanceError, match="Type a prompt to enhance first.") as refused:
        text_enhancer.enhance(prompt)
    assert isinstance(refused.value, UserError) and not spy.calls


def test_a_cancel_before_generation_runs_nothing(text_enhancer, monkeypatch):
    spy = Spy(text_enhancer, monkeypatch)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EnhanceCancelled):
        text_enhancer.enhance("a cat", cancel=cancel)
    assert not spy.calls


class CancelAfter:
    """A logits processor (called once per generated token) that sets the cancel event at its n-th call."""

    def __init__(self, event: threading.Event, n: int):
        self.event, self.n, self.calls = event, n, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            self.event.set()
        return scores


def test_a_cancel_during_generation_stops_within_a_token(text_enhancer, monkeypatch):
    prompt, seed = "a train crosses a bridge", 3
    control = Spy(text_enhancer, monkeypatch)
    text_enhancer.enhance(prompt, seed=seed, max_new_tokens=40)
    assert control.new_tokens() > 10  # left alone, this run goes on well past the cancel below

    cancel = threading.Event()
    counter = CancelAfter(cancel, n=4)
    spy = Spy(text_enhancer, monkeypatch, processors=[counter])
    with pytest.raises(EnhanceCancelled):
        text_enhancer.enhance(prompt, seed=seed, max_new_tokens=40, cancel=cancel)
    assert counter.calls == 4  # no token computed after the one during which cancel was set
    assert spy.new_tokens() == 4 < 40


def test_a_real_enhancer_missing_offline_is_named_with_how_to_get_it(monkeypatch, tmp_path):
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for spec_id, name in (("qwen2.5-3b-instruct", "Qwen2.5-3B-Instruct"),
                          ("qwen2.5-vl-3b-instruct", "Qwen2.5-VL-3B-Instruct")):  # fmt: skip
        with pytest.raises(ModelUnavailableError) as missing:
            load_enhancer(spec_id, offline=True)
        message = str(missing.value)
        assert isinstance(missing.value, UserError)
        assert name in message and f"Qwen/{name}" in message and "prompt enhancer" in message
        assert "without --offline" in message  # how to get it


def test_the_catalogue_names_the_real_models_and_refuses_unknown_ids():
    assert enhancer_spec("qwen2.5-3b-instruct").repo == "Qwen/Qwen2.5-3B-Instruct"
    assert enhancer_spec("qwen2.5-vl-3b-instruct").kind == "vision"
    assert enhancer_spec(enhance.DEFAULT_VISION_ENHANCER).repo == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(EnhanceError, match="qwen2.5-3b-instruct"):
        enhancer_spec("gpt-5")


def test_the_vision_enhancer_looks_at_the_picture(vision_enhancer, monkeypatch):
    assert vision_enhancer.kind == "vision" and type(vision_enhancer.model).__name__.startswith("Qwen2_5_VL")
    spy = Spy(vision_enhancer, monkeypatch)
    first = vision_enhancer.enhance("the cat wakes up", image=picture(0), seed=1)
    assert first and "\n" not in first
    call = spy.calls[-1]
    chat = spy.chat()
    assert SYSTEM_PROMPT in chat and IMAGE_INSTRUCTIONS in chat and "the cat wakes up" in chat
    assert chat.index("<|vision_start|>") < chat.index("the cat wakes up")
    # every merged patch of the picture is one image token the model reads, and the pixels go with them
    grid = call["image_grid_thw"][0]
    image_tokens = int((call["input_ids"][0] == vision_enhancer.model.config.image_token_id).sum())
    assert image_tokens == int(grid.prod()) // 4 > 0 and call["pixel_values"].shape[0] == int(grid.prod())

    assert vision_enhancer.enhance("the cat wakes up", image=picture(0), seed=1) == first
    assert vision_enhancer.enhance("the cat wakes up", image=picture(1), seed=1) != first  # the picture counts
    without = vision_enhancer.enhance("the cat wakes up", seed=1)  # a vision model also enhances text alone
    assert without and "pixel_values" not in spy.calls[-1] and IMAGE_INSTRUCTIONS not in spy.chat()


def test_a_picture_given_to_a_text_enhancer_is_refused(text_enhancer, monkeypatch):
    spy = Spy(text_enhancer, monkeypatch)
    with pytest.raises(EnhanceError, match="needs a vision-language model") as refused:
        text_enhancer.enhance("the cat wakes up", image=picture(0))
    assert "Qwen2.5-VL-3B-Instruct" in str(refused.value) and not spy.calls


def test_a_big_picture_is_shrunk_before_the_processor():
    fitted = enhance._fit_image(picture(0, width=1920, height=1080).convert("RGBA"))
    assert fitted.mode == "RGB" and fitted.width * fitted.height <= enhance.MAX_IMAGE_PIXELS * 1.01
    assert abs(fitted.width / fitted.height - 1920 / 1080) < 0.02
    small = picture(0, width=200, height=100)
    assert enhance._fit_image(small).size == (200, 100)  # never enlarged


def test_close_frees_the_model():
    enhancer = load_enhancer("test-enhancer")
    with enhancer:
        assert enhancer.loaded
    assert not enhancer.loaded and enhancer.model is None and enhancer.tokenizer is None
    with pytest.raises(RuntimeError, match="closed"):
        enhancer.enhance("a cat")


def test_the_cpu_is_refused_by_name_when_its_free_memory_cannot_hold_the_model(monkeypatch):
    """A 3B enhancer becomes about 12 GB in float32 on the CPU: without the room, the OS would kill the studio."""
    import pipelines.memory

    monkeypatch.setattr(pipelines.memory, "available_ram_gb", lambda: 0.2)
    with pytest.raises(UserError, match=r"needs about 0\.5 GB of free memory on the CPU.*0\.2 GB is free") as err:
        enhance.load_enhancer(enhance.TEST_ENHANCER, "cpu")
    assert "Run the enhancer on the CPU" in str(err.value)
    monkeypatch.setattr(pipelines.memory, "available_ram_gb", lambda: 64.0)
    enhance.load_enhancer(enhance.TEST_ENHANCER, "cpu").close()  # with the room, it loads
