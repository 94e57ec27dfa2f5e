"""The page: the Gradio Blocks layout (`layout.py`, which only wires), the forms and widgets it is made of,
the job watchers (`watch.py`) and the handlers (`handlers/`, plain functions of the `Studio`). Nothing outside
this package imports Gradio's components, except the launcher (`studio/server.py`) that serves the page."""
