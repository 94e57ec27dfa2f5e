"""Wan Studio entry point.

python app.py                       start the studio (http://127.0.0.1:7860)
python app.py generate --prompt ... make one clip headless; prints the MP4's path last
python app.py calibrate-cache       record MagCache's ratios for a model (then it can be chosen)
python app.py verify FILE           check a file's Content Credentials and watermark
python app.py upscale CLIP ...      a clip upscaled by a learned upscaler; prints the new MP4's path last
python app.py interpolate CLIP ...  a clip's motion smoothed by learned frame interpolation (RIFE)
python app.py enhance --prompt ...  the prompt rewritten by the local prompt enhancer; prints it
python app.py add-lora LINK [LOW]   a LoRA (two links: an A14B high/low pair) added from a link; prints its name
python app.py add-upscaler LINK     an upscaler added from a link; prints its name
"""

from __future__ import annotations

import os
import sys

# No telemetry, whichever command runs: set before Gradio or huggingface_hub is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A Hugging Face Space with persistent storage: models, settings, the signing key and the clips live under
# /data, so a restart neither downloads again nor loses anything. Set before huggingface_hub reads HF_HOME.
SPACE_DATA = os.environ.get("WAN_STUDIO_SPACE_DATA", "/data")
if os.environ.get("SPACE_ID") and os.path.isdir(SPACE_DATA) and os.access(SPACE_DATA, os.W_OK):
    os.environ.setdefault("HF_HOME", os.path.join(SPACE_DATA, ".huggingface"))
    os.environ.setdefault("WAN_STUDIO_HOME", os.path.join(SPACE_DATA, "wan-studio"))
    os.environ.setdefault("WAN_STUDIO_OUTPUT_DIR", os.path.join(SPACE_DATA, "outputs"))
if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"):
    import spaces  # noqa: F401  ZeroGPU patches torch on import: before anything initialises CUDA


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "generate":
        from studio.cli import main as generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "calibrate-cache":
        from studio.cli import calibrate_main

        return calibrate_main(argv[1:])
    if argv and argv[0] in ("upscale", "interpolate"):
        from studio.post_cli import main as post_main

        return post_main(argv[0], argv[1:])
    if argv and argv[0] == "enhance":
        from studio.enhance_cli import main as enhance_main

        return enhance_main(argv[1:])
    if argv and argv[0] in ("add-lora", "add-upscaler"):
        from studio.links_cli import main as links_main

        return links_main(argv[0], argv[1:])
    if argv and argv[0] == "verify":
        from studio.verify import main as verify_main

        return verify_main(argv[1:])
    from studio.server import main as studio_main

    return studio_main(argv)


if __name__ == "__main__":
    sys.exit(main())
