"""A split worker's rank (`studio.split_worker.serve`) whose run can be held: while the file named by
WAN_STUDIO_TEST_HOLD does not exist, rank 0 stops in the run's second denoising step (after reporting it),
writes its process id there, and waits to be killed. A test kills a group mid-job this way without racing the
job's end; the group started again finds the file and runs through."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.manager import PipelineManager  # noqa: E402
from studio import split_worker  # noqa: E402

HOLD = Path(os.environ["WAN_STUDIO_TEST_HOLD"])
HELD_FOR_S = 300  # longer than any test waits: the test kills the process first


def held(generate):
    def wrapper(self, request, on_progress=None, cancel=None, wait=True):
        hold = os.environ.get("RANK") == "0" and not HOLD.exists()

        def hooked(progress):
            on_progress(progress)
            if hold and progress.stage == "denoise" and progress.step == 2:
                staging = HOLD.with_suffix(".partial")
                staging.write_text(str(os.getpid()))
                staging.replace(HOLD)
                threading.Event().wait(HELD_FOR_S)

        return generate(self, request, on_progress=hooked, cancel=cancel, wait=wait)

    return wrapper


if __name__ == "__main__":
    PipelineManager.generate = held(PipelineManager.generate)
    split_worker.serve()
