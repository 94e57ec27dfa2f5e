"""One rank of the idle-group test, started by `torch.distributed.run`: once both ranks have joined, the
default group's timeout drops to 1 second (NCCL's is 10 minutes) and rank 0 sends the next job only after
3 seconds, as a studio worker's ranks wait between jobs. Each rank prints what it received."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from pipelines import parallel  # noqa: E402

if __name__ == "__main__":
    rank = parallel.launched_rank()
    dist.init_process_group("gloo")  # joining keeps the default timeout: a slow start is not what is tested
    parallel.init_group(torch.device("cpu"))
    dist.barrier()
    dist.distributed_c10d._set_pg_timeout(timedelta(seconds=1))
    try:
        if rank.rank == 0:
            time.sleep(3)
        got = parallel.same_everywhere(("job", 42) if rank.rank == 0 else None)
        print(f"rank {rank.rank} got {got}", flush=True)
    finally:
        parallel.close_group()
