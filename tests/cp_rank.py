"""One rank of the context-parallel test, started by `torch.distributed.run`: the engine's split run of a
fixed request; rank 0 saves the frames to the .npy file named on the command line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines import parallel  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402

REQUEST = dict(prompt="a paper boat", model="test-tiny", frames=9, steps=3, seed=7)

if __name__ == "__main__":
    rank = parallel.launched_rank()
    parallel.init_group(torch.device("cpu"))
    try:
        manager = PipelineManager(offline=True, device="cpu", context_parallel=rank.world)
        result = manager.generate(validate_request(GenerationRequest(**REQUEST), "test-tiny"))
        if rank.leader:
            np.save(sys.argv[1], result.frames)
            print(f"split {result.context_parallel}")
    finally:
        parallel.close_group()
