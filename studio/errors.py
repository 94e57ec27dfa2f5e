"""What the page, the API and the CLI show when something goes wrong.

A UserError (pipelines.errors) is shown as it is: its message says what to change. Anything else is an
internal error: the traceback goes to the server log under a short reference, and the user sees only the
reference, never a raw Python message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable

from pipelines.errors import UserError

log = logging.getLogger("wan_studio")


def internal_error(err: BaseException) -> str:
    """Log `err` with its traceback under a fresh reference; the sentence to show instead."""
    reference = uuid.uuid4().hex[:8]
    log.error("internal error %s", reference, exc_info=(type(err), err, err.__traceback__))
    return f"Internal error (reference {reference}): the details are in the studio's log."


def message_for(err: BaseException) -> str:
    return str(err) if isinstance(err, UserError) else internal_error(err)


def shown_in_page(handler: Callable) -> Callable:
    """A Gradio handler whose every failure reaches the page (and API callers) as a plain message:
    gr.Error passes through, UserError keeps its message, anything else becomes an internal error."""
    import gradio as gr

    def translate(err: Exception) -> Exception:
        if isinstance(err, gr.Error):
            return err
        return gr.Error(message_for(err))

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(*args, **kwargs):
            try:
                async for update in handler(*args, **kwargs):
                    yield update
            except Exception as err:
                raise translate(err) from None

        return stream

    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def call_async(*args, **kwargs):
            try:
                return await handler(*args, **kwargs)
            except Exception as err:
                raise translate(err) from None

        return call_async

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as err:
            raise translate(err) from None

    return call
