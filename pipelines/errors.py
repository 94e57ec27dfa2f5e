"""The one error family for what a user can cause: a bad request, a model that is missing or does not fit,
a full disk. Every subclass's message says what to change. The page, the API and the CLI catch this base
alone; any other exception is an internal error, shown as a short message with a reference to the log."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; str(error) is the sentence to show them."""
