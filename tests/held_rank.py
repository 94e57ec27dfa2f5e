"""A split worker's rank (`studio.jobs.split.serve`) whose run a test can hold in its second denoising step
(after reporting it), by the request's prompt, so a cancel or a kill finds the job under way, never finished:

- "hold until cancel…": rank 0 waits there for the studio's cancel flag; then every rank stops at the next
  check, together (the flag is rank 0's, broadcast).
- "hold until killed…": unless the file named by WAN_STUDIO_TEST_HOLD exists, rank 0 writes its process id
  there and waits to be killed; a group started again finds the file and runs through.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.manager import PipelineManager  # noqa: E402
from studio.jobs import split as split_worker  # noqa: E402

HELD_FOR_S = 300  # longer than any test waits: the test cancels or kills first


def held(generate):
    def wrapper(self, request, on_progress=None, cancel=None, wait=True):
        leader = os.environ.get("RANK") == "0"
        marker = Path(os.environ.get("WAN_STUDIO_TEST_HOLD", "/nonexistent/hold"))
        until_cancel = leader and request.prompt.startswith("hold until cancel")
        until_killed = leader and request.prompt.startswith("hold until killed") and not marker.exists()

        def hooked(progress):
            on_progress(progress)
            if progress.stage != "denoise" or progress.step != 2:
                return
            if until_cancel:
                cancel.local.wait(HELD_FOR_S)  # rank 0's flag, set by the studio's message
            if until_killed:
                staging = marker.with_suffix(".partial")
                staging.write_text(str(os.getpid()))
                staging.replace(marker)
                threading.Event().wait(HELD_FOR_S)

        return generate(self, request, on_progress=hooked, cancel=cancel, wait=wait)

    return wrapper


if __name__ == "__main__":
    PipelineManager.generate = held(PipelineManager.generate)
    split_worker.serve()
