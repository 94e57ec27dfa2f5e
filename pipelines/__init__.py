"""The Wan Studio engine: catalogue, request checks, pipeline manager, previews and clip files.

Nothing here imports Gradio; the studio UI and the CLI call in through `validate_request`,
`PipelineManager.generate` and `save_clip`.
"""

APP_NAME = "Wan Studio"
__version__ = "0.1.0"
