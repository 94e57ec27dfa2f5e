"""The studio as an MCP server (`python app.py --mcp`): an MCP client lists the tools, reads what each argument
means, and makes a clip with the test model through one of them; a refusal comes back as the API's sentence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.media import decode_video
from tests.server import studio

mcp = pytest.importorskip("mcp")  # the gradio[mcp] extra, in requirements.txt


def call(url: str, work):
    """Run `work(session)` against the studio's MCP server (streamable HTTP)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(run())


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with studio(tmp_path_factory.mktemp("mcp"), "--mcp") as s:
        yield s


def test_the_tools_are_listed_with_what_each_argument_means(running):
    tools = {tool.name: tool for tool in call(running.url, lambda s: s.list_tools()).tools}
    for name in ("text_to_video", "image_to_video", "long_take", "search_library", "assemble"):
        assert name in tools, sorted(tools)
    t2v = tools["text_to_video"]
    assert "from a text prompt" in t2v.description
    properties = t2v.inputSchema["properties"]
    assert "4n+1" in properties["frames"]["description"] and "-1" in properties["seed"]["description"]
    assert "one prompt per window" in tools["long_take"].inputSchema["properties"]["window_prompts"]["description"]
    assert "search_library" in tools["assemble"].inputSchema["properties"]["storyboard"]["description"]


def test_an_agent_makes_a_clip_finds_it_and_assembles_a_film(running):
    async def work(session):
        made = await session.call_tool("text_to_video", {"prompt": "a lighthouse in a storm", "steps": 2,
                                                         "frames": 9, "seed": 21})  # fmt: skip
        found = await session.call_tool("search_library", {"query": "lighthouse"})
        return made, found

    made, found = call(running.url, work)
    assert not made.isError, made.content
    texts = " ".join(getattr(part, "text", "") for part in made.content)
    assert "Done" in texts and "seed 21" in texts, texts
    clips = sorted(running.output_dir.glob("*.mp4"))
    assert len(clips) == 1 and decode_video(clips[0])[0].shape[0] == 9  # the clip, decoded from the library
    listed = json.loads("".join(getattr(part, "text", "") for part in found.content))
    assert [c["file"] for c in listed] == [clips[0].name] and listed[0]["seed"] == 21

    board = json.dumps({"shots": [{"clip": clips[0].name}]})
    film = call(running.url, lambda s: s.call_tool("assemble", {"storyboard": board}))
    assert not film.isError, film.content
    assert list((running.output_dir / "films").glob("*.mp4"))


def test_a_refusal_is_the_apis_sentence(running):
    before = set(Path(running.output_dir).glob("*.mp4"))
    refused = call(running.url, lambda s: s.call_tool("text_to_video", {"prompt": "a cat", "frames": 10}))
    text = " ".join(getattr(part, "text", "") for part in refused.content)
    assert refused.isError, text
    assert "frame count must be 4n+1" in text and "Traceback" not in text and "Internal" not in text, text
    assert set(Path(running.output_dir).glob("*.mp4")) == before  # a refusal makes no clip
