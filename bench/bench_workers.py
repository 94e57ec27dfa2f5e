"""Jobs per minute through the studio's queue with 1 and 2 GPU workers (`--gpus`), the test model.

    python bench/bench_workers.py --jobs 8 --devices cpu,cpu

On a CPU-only machine both workers share the same cores, so this measures the queue's overhead and
overlap, not GPU scaling: with one GPU per worker, each worker has its own device and the figure scales
with the worker count until the host (decode, encode, signing) is the limit.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WAN_STUDIO_HOME", tempfile.mkdtemp(prefix="wan-bench-home-"))

from library import Library  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402
from studio.jobs.queue import DONE, JobQueue  # noqa: E402
from studio.jobs.workers import LocalWorker, worker_labels  # noqa: E402


def run(devices: list[str], jobs: int, steps: int, frames: int, size: str) -> float:
    width, height = (int(v) for v in size.split("x"))
    workers = [LocalWorker(PipelineManager(offline=True, device=d), label=label)
               for d, label in zip(devices, worker_labels(devices), strict=True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        queue = JobQueue(workers, Library.open(Path(out)))
        warm = [queue.submit(_request(i, steps, frames, width, height)) for i in range(len(workers))]
        _wait(queue, warm)  # every worker loads its model first: the figure is steady-state throughput
        started = time.perf_counter()
        submitted = [queue.submit(_request(100 + i, steps, frames, width, height)) for i in range(jobs)]
        _wait(queue, submitted)
        elapsed = time.perf_counter() - started
        assert all(queue.get(j.id).status == DONE for j in submitted)
    return jobs / elapsed * 60


def _request(seed: int, steps: int, frames: int, width: int, height: int):
    return validate_request(GenerationRequest(prompt="a red cat", model="test-tiny", seed=seed, steps=steps,
                                              frames=frames, width=width, height=height), "test-tiny")  # fmt: skip


def _wait(queue: JobQueue, jobs) -> None:
    while not all(queue.get(j.id).finished for j in jobs):
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", default="256x256")
    p.add_argument("--devices", default="cpu,cpu", help="the devices of the largest run, like cpu,cpu or 0,1")
    args = p.parse_args()
    devices = [d if d == "cpu" else f"cuda:{d}" for d in args.devices.split(",")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; test-tiny {args.size}, "
          f"{args.frames} frames, {args.steps} steps, {args.jobs} jobs")  # fmt: skip
    for count in range(1, len(devices) + 1):
        rate = run(devices[:count], args.jobs, args.steps, args.frames, args.size)
        print(f"{count} worker(s) on {','.join(devices[:count])}: {rate:.1f} jobs/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
