"""The page's handlers: plain functions taking the `Studio` first, in small modules by tab, importable and
tested without a server. `bind` turns one into a Gradio event handler; the Blocks layout (studio/page/layout.py)
only wires them to widgets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import shown_in_page

if TYPE_CHECKING:
    from studio.core import Studio

# What more than one handler needs, here so that handlers never import each other:
AUTO_SIZE = "auto (match the picture)"  # the image-to-video size choice that follows the picture
ASSETS = Path(__file__).resolve().parents[3] / "assets"  # pictures the page shows (served beside the output)


def bind(handler: Callable, studio: Studio) -> Callable:
    """`handler(studio, *values)` as a Gradio handler of `*values`: same parameters (the API's names and
    defaults), same kind (plain, async, streaming), and every failure shown as a plain message."""
    wrapped = shown_in_page(functools.partial(handler, studio))
    wrapped.__name__ = handler.__name__
    wrapped.__qualname__ = handler.__qualname__
    wrapped.__doc__ = handler.__doc__
    return wrapped
