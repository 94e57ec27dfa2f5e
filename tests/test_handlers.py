"""The page's handlers as plain functions on an in-process studio: no server, no browser."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from library import Shot, Storyboard, StoryboardConflict, StoryboardError
from pipelines.request import GenerationRequest, RequestError
from studio.handlers import generate, library, queue, settings, storyboard
from studio.jobs import DONE
from studio.server import Studio
from studio.settings import Settings, settings_path

TINY = "test-tiny"


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Studio:
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    return Studio(Settings(model=TINY, output_dir=str(tmp_path / "outputs")), offline=True)


def finished(studio: Studio, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not studio.jobs.get(job_id).finished:
        assert time.monotonic() < deadline
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
    assert set(values) == {"prompt", "negative_prompt", "size", "frames", "steps", "guidance_scale", "seed"}


def test_the_queue_table_lists_clips_and_films(studio):
    name = make_clip(studio, "listed | with a bar")
    job = studio.jobs.submit_film(Storyboard(shots=[Shot(name)], title="Premiere"))
    finished(studio, job.id)
    text, _ = queue.table(studio)
    assert "Film: Premiere (1 shot)" in text and "listed / with a bar" in text
    assert queue.active(studio) == []


def controls(studio: Studio, board: Storyboard) -> list:
    return list(storyboard.values_of(studio, board))


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
    assert list(rows["clip"]) == [first, second] and "2 shots" in summary
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
