"""The Wan Studio engine: catalogue, request checks, pipeline manager, previews and clip files.

Nothing here imports Gradio or writes into the output folder (that is library/). The studio and the CLI
use these modules only: request (GenerationRequest, validate_request, ValidRequest), catalogue (the models),
manager (PipelineManager, Progress, GenerationResult), memory (profiles), speed and attention (speed
options), errors (UserError), and quiet_libraries below.
"""

APP_NAME = "Wan Studio"
__version__ = "0.1.0"


def quiet_libraries() -> None:
    """The studio's own progress reports replace diffusers' and transformers' bars; their warnings stay."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def engine_versions() -> dict[str, str]:
    """The versions that made a clip, for its sidecar (the library records them without importing diffusers)."""
    import platform

    import diffusers
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}
