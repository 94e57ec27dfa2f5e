"""The page's handlers as plain functions on an in-process studio: no server, no browser."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library import LibraryError, Shot, Storyboard, StoryboardConflict, StoryboardError
from pipelines.request import GenerationRequest, RequestError
from studio.core import Studio
from studio.jobs.queue import DONE
from studio.page.handlers import generate, library, queue, settings, storyboard
from studio.settings import Settings, settings_path

TINY = "test-tiny"


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Studio:
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    return Studio(Settings(model=TINY, output_dir=str(tmp_path / "outputs")), offline=True)


def finished(studio: Studio, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not studio.jobs.get(job_id).finished:
        if time.monotonic() > deadline:  # say where the job and every thread stand (a full run failed here once)
            job = studio.jobs.get(job_id)
            stacks = "".join(f"\n--- {t.name}\n" + "".join(traceback.format_stack(sys._current_frames()[t.ident]))
                             for t in threading.enumerate() if t.ident in sys._current_frames())  # fmt: skip
            pytest.fail(f"job {job_id} still {job.status} after {timeout} s: {job.message!r}{stacks}")
        time.sleep(0.05)
    return studio.jobs.get(job_id)


def make_clip(studio: Studio, prompt: str = "a red cat", **fields) -> str:
    job = studio.submit(GenerationRequest(prompt=prompt, steps=2, **fields))
    assert finished(studio, job.id).status == DONE
    return Path(studio.jobs.get(job.id).result).name


def save_settings(studio: Studio, **changes):
    values = dict(model=TINY, profile="auto", precision="auto", output_dir=str(studio.output_dir), steps="",
                  guidance="", negative="")  # fmt: skip
    values.update(changes)
    return settings.save(studio, **values)


def test_settings_save_untouched_refuse_bad_values_and_confirm_a_new_output_folder(studio, tmp_path):
    status, note = save_settings(studio)
    assert status.startswith("Saved") and note.startswith("Model: **Tiny")
    assert json.loads(settings_path().read_text())["steps"] is None
    for changes, fragment in [
        (dict(steps="abc"), "Default steps must be a number"),
        (dict(steps="2.5"), "Default steps must be a whole number"),
        (dict(steps="500"), "from 1 to 100"),
        (dict(guidance="-1"), "Default guidance must be from 0"),
        (dict(attention_backend="sage"), "needs a CUDA GPU"),
        (dict(model="no/such-model"), "Unknown model"),
        (dict(output_dir=str(tmp_path / "elsewhere")), "Tick 'Use this output folder' to confirm"),
    ]:
        before = settings_path().read_text()
        status, note = save_settings(studio, **changes)
        assert status.startswith("**Not saved:**") and fragment in status and note is None, (changes, status)
        assert settings_path().read_text() == before
    status, _ = save_settings(studio, output_dir=str(tmp_path / "elsewhere"), confirm_output_dir=True, steps="7")
    assert "The output folder changes at the next start" in status
    assert json.loads(settings_path().read_text())["output_dir"].endswith("elsewhere")
    assert studio.output_dir == (tmp_path / "outputs").resolve()  # not moved under the running studio


def test_concurrent_saves_never_collide(studio):
    results = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(save_settings(studio, steps=str(n + 1))[0]))
        for n in range(24)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 24 and all(r.startswith("Saved") for r in results)
    assert 1 <= json.loads(settings_path().read_text())["steps"] <= 24
    left = sorted(p.name for p in settings_path().parent.iterdir() if p.is_file())
    assert left == ["settings.json"]  # no temporary file left behind by any of them


@pytest.mark.parametrize(
    "values, field",
    [
        (dict(prompt=3), "prompt"),
        (dict(size="tall"), "size"),
        (dict(frames="x"), "frames"),
        (dict(steps=float("nan")), "steps"),
        (dict(guidance_scale=float("inf")), "guidance_scale"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_form_values_of_the_wrong_kind_are_refused_by_field(values, field):
    fields = dict(prompt="a cat", negative_prompt="", size="", frames=0, steps=0, guidance_scale=-1, seed=-1)
    fields.update(values)
    with pytest.raises(RequestError) as info:
        generate.form_request(TINY, "t2v", **fields)
    assert list(info.value.problems) == [field]


def test_reuse_gives_the_clips_settings_by_control_name(studio):
    name = make_clip(studio, "a blue dog", seed=42, frames=13)
    task, values, picture = library.reuse(studio, name)
    assert task == "t2v" and picture is None
    assert values["prompt"] == "a blue dog" and values["seed"] == 42 and values["frames"] == 13
    assert values["size"] == "96x64" and values["steps"] == 2
    assert set(values) == {"prompt", "negative_prompt", "size", "frames", "steps", "guidance_scale", "seed", "fast",
                           "loras", "cache", "match_colour", "end_image", "window_prompts", "take_seconds",
                           "take_overlap"}  # fmt: skip
    assert values["fast"] is False and values["loras"] == [] and values["cache"]["kind"] == "off"
    assert values["window_prompts"] == "" and values["take_seconds"] == 0  # a single clip: no take


@pytest.fixture
def a_lora(studio, tmp_path) -> str:
    """A LoRA for the test model, kept in the studio's LoRA folder as an upload would be."""
    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    model = WanTransformer3DModel.from_pretrained(ensure_test_model(TINY) / "transformer")
    upload = save_lora(lora_weights(model, seed=4, scale=0.2), tmp_path / "upload" / "ink style.safetensors", "kohya")
    assert "Kept 'ink style.safetensors'" in settings.keep_lora(studio, str(upload))
    return "ink style.safetensors"


def test_reuse_restores_loras_and_fast_and_refuses_a_changed_or_missing_file(studio, a_lora):
    loras = generate.slots_to_loras(a_lora, 0.5, True, True, None, 1.0, True, True)
    job = studio.submit(generate.with_extras(studio, GenerationRequest(prompt="inked", steps=2), loras, False))
    assert finished(studio, job.id).status == DONE, studio.jobs.get(job.id).error
    name = Path(studio.jobs.get(job.id).result).name
    _, values, _ = library.reuse(studio, name)
    assert values["loras"] == [{"file": a_lora, "strength": 0.5, "experts": "high"}]

    path = studio.loras.root / a_lora
    path.write_bytes(path.read_bytes() + b" ")  # the same name, other bytes
    with pytest.raises(LibraryError, match="changed since that clip was made"):
        library.reuse(studio, name)
    path.unlink()
    with pytest.raises(LibraryError, match="is not in the LoRA folder"):
        library.reuse(studio, name)

    # the clip ran uncached; a studio now set to cache gets its cache put back as the clip was made
    save_settings(studio, step_cache="first-block", cache_threshold="0.2")
    assert settings.use_cache(studio, values_cache := {"kind": "off", "threshold": 0.0}) == (
        "Step cache set to off in Settings, as this clip was made."
    )
    assert studio.settings.step_cache == "off" and settings.use_cache(studio, values_cache) is None
    assert json.loads(settings_path().read_text())["step_cache"] == "off"
    assert settings.use_cache(studio, {"kind": "first-block", "threshold": 0.1}).startswith("Step cache set to")
    assert (studio.settings.step_cache, studio.settings.cache_threshold) == ("first-block", 0.1)
    assert settings.use_cache(studio, {"kind": "magcache", "threshold": 0.06}).startswith(
        "The step cache stays as it is: MagCache needs ratios calibrated"
    )

    fast = studio.submit(generate.with_extras(studio, GenerationRequest(prompt="quick"), "[]", True))
    assert finished(studio, fast.id).status == DONE
    _, values, _ = library.reuse(studio, Path(studio.jobs.get(fast.id).result).name)
    assert values["fast"] is True and values["steps"] == 3


def test_the_forms_lora_slots_and_the_apis_loras_argument(studio, a_lora):
    assert json.loads(generate.slots_to_loras(None, 1, True, True, a_lora, -0.5, False, True)) == [
        {"file": a_lora, "strength": -0.5, "experts": "low"}
    ]
    for value, fragment in [
        ("{oops", "loras must be a JSON list like"),
        ('{"file": "x"}', "loras must be a JSON list of LoRAs"),
        ("[1]", "LoRA 1 must be an object with a 'file'"),
        ('[{"file": "ink style.safetensors", "weight": 2}]', "fields Wan Studio does not know: weight"),
        ('[{"file": "ink style.safetensors", "experts": "none"}]', "tick High-noise, Low-noise or both"),
        ('[{"file": "ink style.safetensors", "experts": ["high"]}]', "experts must be 'both', 'high' or 'low'"),
        ('[{"file": "../../etc/passwd.safetensors"}]', "A LoRA is named by a .safetensors file of the LoRA folder"),
        ('[{"file": "other.safetensors"}]', "The LoRA 'other.safetensors' is not in the LoRA folder"),
        (json.dumps([{"file": a_lora}] * 9), "At most 8 LoRAs at once"),
    ]:
        with pytest.raises(RequestError) as err:
            generate.parse_loras(studio, value)
        assert fragment in err.value.problems["loras"], (value, err.value.problems)
    with pytest.raises(RequestError, match="fast must be true or false"):
        generate.with_extras(studio, GenerationRequest(prompt="a"), "[]", "yes")
    steps, guidance = generate.fast_controls(studio, True)
    assert (steps["value"], steps["interactive"], guidance["value"]) == (3, False, 1.0)
    steps, _ = generate.fast_controls(studio, False)
    assert steps["interactive"] is True


def test_settings_keep_loras_list_them_and_save_the_cache(studio, a_lora, tmp_path):
    assert "ink style.safetensors — for the tiny TI2V test layout" in settings.lora_table(studio)
    assert settings.lora_choices(studio) == [a_lora]
    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    other = WanTransformer3DModel.from_pretrained(ensure_test_model("test-tiny-a14b") / "transformer")
    save_lora(lora_weights(other), studio.loras.root / "for-a14b.safetensors")
    assert settings.lora_choices(studio) == [a_lora]  # the forms offer only LoRAs made for the model in use
    assert "for-a14b.safetensors — for the tiny A14B test layout" in settings.lora_table(studio)
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello")
    from pipelines.loras import LoraError

    with pytest.raises(LoraError, match="could not be read as a .safetensors file"):
        settings.keep_lora(studio, str(bad))
    assert settings.keep_lora(studio, None).startswith("Choose a `.safetensors` LoRA file")

    status, _ = save_settings(studio, step_cache="magcache")
    assert status.startswith("**Not saved:**") and "calibrate-cache --model test-tiny" in status
    status, _ = save_settings(studio, step_cache="first-block", cache_threshold="2")
    assert "from 0 to 1" in status
    status, _ = save_settings(studio, step_cache="first-block", cache_threshold="0.1", lora_dir=str(tmp_path / "mine"))
    assert status.startswith("Saved")
    assert (studio.settings.step_cache, studio.settings.cache_threshold) == ("first-block", 0.1)
    assert studio.loras.root == tmp_path / "mine" and settings.lora_choices(studio) == []


def test_the_queue_table_lists_clips_and_films(studio):
    name = make_clip(studio, "listed | with a bar")
    job = studio.jobs.submit_film(Storyboard(shots=[Shot(name)], title="Premiere"))
    finished(studio, job.id)
    text, _ = queue.table(studio)
    assert "Film: Premiere (1 shot)" in text and "listed / with a bar" in text
    assert queue.active(studio) == []


def controls(studio: Studio, board: Storyboard) -> list:
    return list(storyboard.values_of(studio, board))


def decoded(studio: Studio, name: str) -> np.ndarray:
    """Every frame of a library clip, decoded from its file here (never through the studio's own frame_at)."""
    from tests.media import decode_video

    frames, fps = decode_video(studio.library.clip(name).video)
    assert fps == 8  # the test model's rate: the tests below count frames in eighths of a second
    return frames


def shown_frame(picture, frames: np.ndarray) -> int:
    """Which of `frames` a picture is: the nearest, and a match to within encoding noise (the test model's
    frames differ from each other by about 20 levels on average)."""
    if isinstance(picture, (str, Path)):
        from PIL import Image

        picture = Image.open(picture)
    pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    distances = [float(np.abs(pixels - frame.astype(np.int16)).mean()) for frame in frames]
    nearest = int(np.argmin(distances))
    assert distances[nearest] < 2.0, f"the picture is none of the clip's frames: {distances}"
    return nearest


def test_storyboard_save_keeps_an_extensions_shot_and_refuses_a_conflict(studio):
    first, second = make_clip(studio, "first"), make_clip(studio, "second")
    loaded = storyboard.reload(studio)
    base = loaded[-1]
    page = controls(studio, Storyboard(shots=[Shot(first)]))
    summary, rows, base = storyboard.save(studio, base, *page)
    assert summary.startswith("Saved. **Film: 1 shot")
    studio.library.storyboard.append(Shot(second))  # the GPU worker finished an extension meanwhile
    page[1] = "A title"  # the page, unaware, edits and saves again
    summary, rows, new_base = storyboard.save(studio, base, *page)
    assert [row[0] for row in rows] == [first, second] and "2 shots" in summary
    assert studio.library.storyboard.load().title == "A title"
    elsewhere = controls(studio, Storyboard(shots=[Shot(second)]))
    storyboard.save(studio, new_base, *elsewhere)  # another page changes the order
    with pytest.raises(StoryboardConflict):
        storyboard.save(studio, new_base, *page)


def test_export_runs_as_a_film_job_and_assemble_refuses_bad_json(studio):
    name = make_clip(studio, "to a film")
    base = storyboard.reload(studio)[-1]

    async def run():
        return [update async for update in storyboard.export(studio, base, *controls(studio, Storyboard([Shot(name)])))]

    updates = asyncio.run(run())
    status, film_video, film_file, _rows, _base = updates[-1]
    assert status.startswith("**Done**") and Path(film_file).is_file() and film_video == film_file
    assert any(job.label.startswith("Film:") for job in studio.jobs.jobs())
    with pytest.raises(StoryboardError, match="not valid JSON"):
        asyncio.run(storyboard.assemble(studio, "{"))
    film = asyncio.run(storyboard.assemble(studio, json.dumps({"shots": [{"clip": name}], "format": "gif"})))
    assert film.endswith(".gif") and Path(film).is_file()


def collect(stream) -> list:
    async def run():
        return [update async for update in stream]

    return asyncio.run(run())


def test_the_page_shows_a_refusal_or_a_failed_job_as_its_status_line_and_no_seed(studio):
    updates = collect(generate.text_to_video_in_page(studio, "a cat", "", "1000x10", 9, 2, 5, -1, "[]", False))
    assert len(updates) == 1
    _, status, clip, job_id, seed = updates[0]
    assert status.startswith("**Not started** — ") and "height must be between" in status
    assert (clip, job_id, seed) == (None, "", None)

    updates = collect(generate.text_to_video_in_page(studio, "a cat", "", "96x64", 5, 2, 5, 7, "[]", False))
    assert updates[-1][1].startswith("**Done** in") and updates[-1][4] == 7  # the seed, once the clip is done
    assert all(update[4] is None for update in updates[:-1])

    studio.settings.model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # not downloaded, and the studio is offline
    updates = collect(generate.text_to_video_in_page(studio, "a cat", "", "832x480", 5, 2, 5, 7, "[]", False))
    _, status, clip, _, seed = updates[-1]
    assert status.startswith("**Failed** — ") and "not downloaded yet" in status, status
    assert clip is None and seed is None


def test_start_up_flags_hold_for_the_run_and_are_never_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    from dataclasses import replace

    from pipelines.catalogue import DEFAULT_MODEL
    from studio.settings import load_settings
    from studio.settings import save_settings as write

    write(Settings(output_dir=str(tmp_path / "mine"), steps=7))  # what the user saved earlier
    flags = {"model": TINY, "output_dir": str(tmp_path / "flagged")}  # python app.py --model … --output-dir …
    flagged = Studio(replace(load_settings()[0], **flags), offline=True, flags=flags)
    assert flagged.settings.model == TINY and flagged.output_dir == (tmp_path / "flagged").resolve()
    status, _ = save_settings(flagged, output_dir=str(tmp_path / "flagged"), steps="9")  # only steps changed
    assert status.startswith("Saved"), status
    stored = json.loads(settings_path().read_text())
    assert (stored["model"], stored["output_dir"], stored["steps"]) == (DEFAULT_MODEL, str(tmp_path / "mine"), 9)
    status, _ = save_settings(flagged, model="test-tiny-wan21", output_dir=str(tmp_path / "flagged"))
    assert json.loads(settings_path().read_text())["model"] == "test-tiny-wan21"  # a change the user made is kept


def test_without_a_gpu_the_page_says_so_and_offers_the_test_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    from pipelines.catalogue import DEFAULT_MODEL

    real = Studio(Settings(model=DEFAULT_MODEL, output_dir=str(tmp_path / "outputs")), offline=True)
    assert not real.has_gpu and real.include_test_models  # this machine has no CUDA GPU
    assert settings.gpu_notice(real).startswith("**No CUDA GPU was found on this machine.**")
    updates = collect(generate.text_to_video_in_page(real, "a cat", "", "640x352", 5, 1, 5, 7, "[]", False))
    status = updates[-1][1]
    assert "No CUDA GPU was found on this machine" in status and "test model" in status, status
    assert "smaller size" not in status and "fewer frames" not in status  # no advice that cannot work

    notice, note = settings.use_test_model(real)
    assert "you are using the test model" in notice and "Tiny" in note and real.settings.model == TINY
    updates = collect(generate.text_to_video_in_page(real, "a cat", "", "", 5, 2, 5, 7, "[]", False))
    assert updates[-1][1].startswith("**Done**")


def test_the_library_grid_searches_filters_and_reads_like_settings(studio):
    from PIL import Image

    fox = make_clip(studio, "A red FOX in snow", seed=42)
    picture = Image.new("RGB", (96, 64), (200, 100, 50))
    boat = make_clip(studio, "a paper boat", image=picture, task="i2v")
    page = library.grid(studio)
    assert page.names == [boat, fox] and page.making == []  # newest first; posters were made with the clips
    poster = Path(page.cells[1][0])
    assert poster.parent == studio.output_dir / "posters" and Image.open(poster).size[0] <= 320
    assert page.cells[1][1] == "A red FOX in snow" and page.summary == "2 clips"
    assert library.grid(studio, "fox snow").names == [fox]  # every word, any case
    nothing = library.grid(studio, "fox boat")
    assert nothing.names == [] and nothing.summary == "No clip matches."
    assert library.grid(studio, task="i2v").names == [boat]
    assert library.grid(studio, model="test-tiny").names == [boat, fox]
    assert library.grid(studio, model="Wan-AI/Wan2.2-TI2V-5B-Diffusers").names == []
    assert library.filters(studio)[1] == ("Tiny Wan2.2 TI2V layout [TEST MODEL, random weights]", "test-tiny")
    fox_frame = np.asarray(Image.open(poster).convert("RGB"), dtype=np.int16)
    poster.unlink()
    page = library.grid(studio)  # at once, with a placeholder where the poster is missing
    assert page.cells[1][0] == str(library.MAKING) and len(page.making) == 1
    assert page.making[0].result(timeout=60) == poster  # then made again in the background
    assert np.abs(np.asarray(Image.open(poster).convert("RGB"), dtype=np.int16) - fox_frame).max() <= 2
    assert library.grid(studio).cells[1][0] == str(poster)

    video, text, raw = library.show_clip(studio, fox)
    assert video.endswith(fox) and raw["settings"]["seed"] == 42
    assert text.startswith("**A red FOX in snow**") and "- Seed: 42" in text and "96×64" in text
    assert "Content Credentials: signed by this studio" in text
    library.trash(studio, boat)
    assert library.grid(studio).names == [fox]


def test_the_library_grid_shows_one_page_at_a_time_and_makes_only_that_pages_posters(studio):
    """A folder of clips from elsewhere (no posters): the first page comes at once with placeholders, its
    posters are made in the background, the next page on request; posters of pages not shown are not made."""
    source = studio.library.clip(make_clip(studio, "a lighthouse at dusk", seed=5))
    sidecar = json.loads(source.video.with_suffix(".json").read_text())
    names = []
    for n in range(library.PAGE_SIZE + 7):  # copies, as a restored backup or another machine's folder would be
        stem = f"20990101-0000{n:02d}_copy_{n}"
        os.link(source.video, studio.output_dir / f"{stem}.mp4")
        settings = dict(sidecar["settings"], prompt=f"copy {n} of the lighthouse")
        data = dict(sidecar, file=f"{stem}.mp4", created_at=f"2099-01-01T00:00:{n:02d}", settings=settings)
        (studio.output_dir / f"{stem}.json").write_text(json.dumps(data))
        names.append(f"{stem}.mp4")
    newest = names[::-1]
    first = library.grid(studio)
    assert first.names == newest[: library.PAGE_SIZE] and (first.page, first.pages, first.total) == (1, 2, 32)
    assert first.summary == "32 clips · page 1 of 2"
    placeholder = str(library.MAKING)
    assert [cell[0] for cell in first.cells] == [placeholder] * library.PAGE_SIZE
    assert len(first.making) == library.PAGE_SIZE
    for done in first.making:
        done.result(timeout=120)
    posters = studio.output_dir / "posters"
    assert all((posters / f"{Path(name).stem}.png").is_file() for name in first.names)
    assert not any((posters / f"{Path(name).stem}.png").exists() for name in newest[library.PAGE_SIZE :])
    second = library.grid(studio, page=2)
    assert second.names == [*newest[library.PAGE_SIZE :], source.name] and second.page == 2
    assert [c[0] for c in second.cells[-1:]] != [placeholder]  # the generated clip's poster was made when saved
    assert library.grid(studio, page=99).page == 2 and library.grid(studio, page="x").page == 1
    # a clip that cannot be read says so, and is not decoded again on every look until it changes
    broken = studio.output_dir / f"{Path(newest[0]).stem}.mp4"
    broken.unlink()
    broken.write_bytes(b"not a video")
    shown = library.grid(studio)
    assert len(shown.making) == 1 and shown.making[0].result(timeout=60) is None
    again = library.grid(studio)
    assert again.cells[0][0] == str(library.UNREADABLE) and again.making == []
    os.utime(broken, ns=(broken.stat().st_mtime_ns + 10**9,) * 2)  # changed: tried again
    assert len(library.grid(studio).making) == 1
    assert library.grid(studio, "COPY 30 lighthouse").names == [names[30]]


def test_an_extension_continues_the_last_frames_before_the_last_shots_out_point(studio):
    source = make_clip(studio, "the source", frames=17)  # 17 frames at 8 fps
    frames = decoded(studio, source)
    conditions = []  # the frames each window of the extension was conditioned on, where they enter the engine
    original = studio.manager.generate

    def generate(request, on_progress=None, cancel=None, hook=None):
        conditions.append(getattr(hook, "frames", None))
        return original(request, on_progress, cancel, hook=hook)

    studio.manager.generate = generate
    base = storyboard.reload(studio)[-1]
    trimmed = controls(studio, Storyboard([Shot(source, end_s=1.2)]))  # the film shows frames 0-9 of it
    updates = collect(storyboard.extend_last(studio, base, "it goes on", *trimmed))
    assert updates[-1][1].startswith("Done") and "Added to the storyboard" in updates[-1][1], updates[-1][1]
    board = studio.library.storyboard.load()
    assert [shot.clip for shot in board.shots][0] == source and len(board.shots) == 2
    extension = studio.library.clip(board.shots[-1].clip)
    # the new shot continues frames 5-9, the last five the film shows of the trimmed shot (not the clip's end),
    # and the storyboard starts it after its own version of them
    assert [shown_frame(Image.fromarray(f), frames) for f in conditions[0]] == [5, 6, 7, 8, 9]
    assert board.shots[-1].start_s == pytest.approx(5 / 8)
    window = extension.sidecar["windows"][0]
    assert window["conditioning"] == "clean-latents" and window["overlap"] == 5
    assert extension.settings["take"]["continues"] == source

    # a last shot that runs to its clip's end: the extension continues that clip's last frames
    after = decoded(studio, extension.name)
    base = storyboard.reload(studio)[-1]
    updates = collect(storyboard.extend_last(studio, base, "and on", *controls(studio, board)))
    assert updates[-1][1].startswith("Done")
    latest = studio.library.clip(studio.library.storyboard.load().shots[-1].clip)
    assert latest.name != extension.name
    last = len(after) - 1
    assert [shown_frame(Image.fromarray(f), after) for f in conditions[1]] == list(range(last - 4, last + 1))


def test_continue_from_its_last_frame_starts_the_next_clip_from_that_frame(studio):
    source = make_clip(studio, "the source", frames=9)
    frames = decoded(studio, source)
    picture = library.last_frame(studio, source)  # what "Continue from its last frame" puts into the form
    assert shown_frame(picture, frames) == 8
    values = (picture, "and then", "", generate.AUTO_SIZE, 5, 2, 5, -1, "[]", False, True, None)
    updates = collect(generate.image_to_video_in_page(studio, *values))
    assert updates[-1][1].startswith("**Done**"), updates[-1][1]
    clip = studio.library.clip(Path(updates[-1][2]).name)
    assert shown_frame(clip.input_image, frames) == 8  # the new clip started from the source's last frame


def test_the_storyboard_strip_and_the_shot_editor(studio):
    first, second = make_clip(studio, "first", frames=9), make_clip(studio, "second", frames=9)  # 1.125 s at 8 fps
    rows, picked = storyboard.add_shot(studio, first, [])
    rows, picked = storyboard.add_shot(studio, second, rows)
    assert picked == 1 and [r[0] for r in rows] == [first, second]
    cells = storyboard.strip(studio, rows)
    assert [caption for _, caption in cells] == ["1 · 0.0–end s", "2 · 0.0–end s"]
    assert Path(cells[0][0]).parent.name == "posters"

    view = storyboard.shot_view(studio, rows, 0)
    assert view["length"] == pytest.approx(1.125) and (view["start"], view["end"]) == (0.0, pytest.approx(1.125))
    assert view["title"].startswith("Shot 1 of 2 — first") and not view["last"]
    frames = decoded(studio, first)  # 9 frames at 8 fps, decoded here: frame n shows from n/8 s
    assert (shown_frame(view["in_frame"], frames), shown_frame(view["out_frame"], frames)) == (0, 8)
    rows = storyboard.trim(studio, rows, 0, 0.25, 0.75)
    assert rows[0][1:3] == [0.25, 0.75]
    view = storyboard.shot_view(studio, rows, 0)
    assert view["in_frame"].size == (96, 64) and view["out_frame"].size == (96, 64)
    # In at 0.25 s shows frame 2; Out at 0.75 s ends the shot after frame 5 (frame 6 starts at 0.75 s)
    assert (shown_frame(view["in_frame"], frames), shown_frame(view["out_frame"], frames)) == (2, 5)
    view = storyboard.shot_view(studio, storyboard.trim(studio, rows, 0, 0.5, 0.6), 0)
    assert (shown_frame(view["in_frame"], frames), shown_frame(view["out_frame"], frames)) == (4, 4)
    assert storyboard.trim(studio, rows, 0, 0.0, 9.0)[0][2] is None  # out at the clip's end: to its end
    with pytest.raises(StoryboardError, match="the in point .* must come before the out point"):
        storyboard.trim(studio, rows, 0, 0.8, 0.5)
    rows = storyboard.join(studio, rows, 0, "crossfade", 0.4)
    assert storyboard.strip(studio, rows)[0][1] == "1 · 0.2–0.8 s · crossfade 0.4 s"
    with pytest.raises(StoryboardError, match="a cut or a crossfade"):
        storyboard.join(studio, rows, 0, "wipe", 0.4)

    rows, picked = storyboard.move_right(studio, rows, 0)
    assert [r[0] for r in rows] == [second, first] and picked == 1
    rows, picked = storyboard.move_right(studio, rows, 1)  # already last: stays
    assert picked == 1
    rows, picked = storyboard.remove(studio, rows, 1)
    assert [r[0] for r in rows] == [second] and picked == 0
    with pytest.raises(StoryboardError, match="Pick a shot in the strip first"):
        storyboard.shot_view(studio, rows, 5)

    preview = Path(asyncio.run(storyboard.preview(studio, *controls(studio, Storyboard([Shot(first), Shot(second)])))))
    assert preview.parent == studio.output_dir / "previews" and preview.suffix == ".mp4"
    from tests.media import decode_video

    frames, _ = decode_video(preview)
    assert frames.shape[2] <= 320 and len(frames) == 18
    again = Path(asyncio.run(storyboard.preview(studio, *controls(studio, Storyboard([Shot(first)])))))
    assert not preview.exists() and again.exists()  # only the latest preview is kept
