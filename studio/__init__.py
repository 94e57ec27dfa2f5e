"""The Wan Studio UI layer: the Gradio app, jobs, history and settings, plus the headless CLI.

Only `pipelines`' public names are used here: validate_request, PipelineManager, save_clip and the catalogue.
"""
