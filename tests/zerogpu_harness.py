"""A stand-in for `spaces.GPU` that keeps the contract of the real package on ZeroGPU (spaces 0.51.3,
`spaces/zero/wrappers.py`, generator functions): the function runs in a *forked* worker process that
outlives calls; arguments and each yielded value cross pickled through multiprocessing queues; after each
value the worker checks a stop event and, when the caller closed its generator, closes the function's
generator; the caller waits for the worker's end of call. No scheduling, quotas or CUDA packing."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable

FORK = multiprocessing.get_context("fork")
durations: list[int] = []  # what each call asked for, as spaces.GPU's `duration` would


class _Worker:
    def __init__(self, task: Callable):
        self.calls, self.results, self.stop = FORK.Queue(), FORK.Queue(), FORK.Event()
        self.process = FORK.Process(target=_serve, args=(task, self.calls, self.results, self.stop), daemon=True)
        self.process.start()


def _serve(task: Callable, calls, results, stop) -> None:
    while True:
        args, kwargs = pickle.loads(calls.get())
        stop.clear()
        generator = task(*args, **kwargs)
        try:
            for value in generator:
                if stop.is_set():
                    generator.close()
                    break
                results.put(pickle.dumps(("ok", value)))
        except Exception as err:
            results.put(pickle.dumps(("error", f"{type(err).__name__}: {err}")))
        results.put(pickle.dumps(("end", None)))


def GPU(duration: Callable | None = None):  # noqa: N802 (the package's name)
    def decorate(task: Callable):
        worker: list[_Worker] = []

        def handler(*args, **kwargs):
            if duration is not None:
                durations.append(duration(*args, **kwargs))
            if not worker or not worker[0].process.is_alive():
                worker[:] = [_Worker(task)]
            current = worker[0]
            current.calls.put(pickle.dumps((args, kwargs)))  # a PicklingError here, as with the package
            while True:
                kind, value = pickle.loads(current.results.get(timeout=120))
                if kind == "end":
                    return
                if kind == "error":
                    raise RuntimeError(f"ZeroGPU worker error: {value}")
                try:
                    yield value
                except GeneratorExit:
                    current.stop.set()
                    while pickle.loads(current.results.get(timeout=120))[0] != "end":
                        pass
                    raise

        handler.worker = worker
        return handler

    return decorate
