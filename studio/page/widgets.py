"""Gradio inputs that check what API callers send as well as what the page sends.

Gradio preprocesses an event's inputs before the handler runs; a value of the wrong kind there ends as
"Could not preprocess input component at index 3" or a pydantic traceback line. The inputs made here
refuse such values themselves with a gr.Error naming the field, which Gradio passes through as it is;
everything else is checked by the handlers and validate_request. (They are stock components with a checked
`preprocess`; subclassing a Gradio component would make Gradio write a .pyi stub into this folder.)
"""

from __future__ import annotations

import math
import types
from typing import Any

import gradio as gr
from gradio.components.image import ImageData
from gradio.data_classes import FileData
from gradio.exceptions import Error


def _label(component: gr.components.Component) -> str:
    return str(component.label or "This field").split(" (")[0]


def _checked_number(component: gr.components.Component, whole: bool) -> None:
    stock = component.preprocess

    def preprocess(self, payload: Any):
        if payload is not None:
            if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
                raise gr.Error(f"{_label(self)} must be a number; got {str(payload)[:40]!r}.")
            if whole and not float(payload).is_integer():
                raise gr.Error(f"{_label(self)} must be a whole number; got {payload!r}.")
        try:
            return stock(payload)
        except Error as err:
            raise gr.Error(f"{_label(self)}: {err.message}") from None

    component.preprocess = types.MethodType(preprocess, component)


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802 (reads like the component it makes)
    slider = gr.Slider(*args, **kwargs)
    _checked_number(slider, whole=False)
    return slider


def Number(*args, **kwargs) -> gr.Number:  # noqa: N802
    number = gr.Number(*args, **kwargs)
    _checked_number(number, whole=number.precision == 0)
    return number


def _file_payload(value: Any, what: str) -> Any:
    if value is not None and not (isinstance(value, dict) and isinstance(value.get("path"), str)):
        raise gr.Error(f"{what} must be an uploaded file (gradio_client: handle_file(path)); got {str(value)[:40]!r}.")
    return value


class _PictureData(ImageData):
    @classmethod
    def model_validate(cls, obj: Any, *args, **kwargs):  # Gradio validates the payload before preprocessing
        return super().model_validate(_file_payload(obj, "The picture"), *args, **kwargs)


class _UploadData(FileData):
    @classmethod
    def model_validate(cls, obj: Any, *args, **kwargs):
        return super().model_validate(_file_payload(obj, "The file"), *args, **kwargs)


def Picture(*args, **kwargs) -> gr.Image:  # noqa: N802
    """An image input handed to the handler as a file path: the engine's own checks (size, format, damage)
    read it, with their messages, instead of Gradio decoding it first."""
    image = gr.Image(*args, type="filepath", **kwargs)
    image.data_model = _PictureData

    def preprocess(self, payload: ImageData | None) -> str | None:
        return None if payload is None else payload.path  # Gradio would decode it here, with its own message

    image.preprocess = types.MethodType(preprocess, image)
    return image


def Upload(*args, **kwargs) -> gr.File:  # noqa: N802
    upload = gr.File(*args, type="filepath", **kwargs)
    upload.data_model = _UploadData
    return upload
