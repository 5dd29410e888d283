"""An executor that pickles every node and runs it in a pool of spawned processes on this machine."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue as queue_module
import time
from typing import Any, Callable, Literal, Optional

from pydantic import Field

from advbench import api


class ProcessesExecutor(api.Executor):
    """Runs nodes in a ``concurrent.futures.ProcessPoolExecutor`` whose workers are started with ``spawn``.

    Each ``(fn, node)`` is pickled into a fresh interpreter, exactly as a remote engine would ship it, so this
    is also the test that a stage is plain data plus a module-level function. Progress events travel through
    a ``multiprocessing.Manager`` queue: ``emit`` is a picklable wrapper around its proxy, and ``wait`` drains
    the queue into ``on_event`` in the driver's process while it waits and before it returns finished nodes.
    A stage function's exception comes back as ``(node, exc)``; a worker that dies breaks the pool, and every
    node still in it comes back with ``BrokenProcessPool``. ``slots`` is ``workers``.

    Options:
        workers: processes in the pool, each running one node at a time.
        start_method: how the workers start; ``spawn`` (the default) shares nothing with the driver.
    """

    name = "processes"
    description = "Pickles every node and runs it in a pool of spawned processes on this machine"

    class Options(api.Options):
        workers: int = Field(2, ge=1)
        start_method: Literal["spawn", "forkserver", "fork"] = "spawn"

    POLL_SECONDS = 0.05  # how often wait drains progress events while nodes run

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._manager: Any = None
        self._events: Any = None
        self._emit: Optional[_QueueEmit] = None
        self._on_event: Callable[[dict], None] = _ignore
        self._pending: dict[cf.Future, Any] = {}

    @property
    def slots(self) -> int:
        return self.options.workers

    def open(self, on_event: Callable[[dict], None]) -> None:
        context = multiprocessing.get_context(self.options.start_method)
        self._on_event = on_event
        self._manager = context.Manager()
        self._events = self._manager.Queue()
        self._emit = _QueueEmit(self._events)
        self._pool = cf.ProcessPoolExecutor(max_workers=self.options.workers, mp_context=context)

    def submit(self, fn: Callable[[Any, Callable[[dict], None]], dict], node: Any) -> None:
        if self._pool is None:
            raise RuntimeError("ProcessesExecutor.submit before open")
        self._pending[self._pool.submit(fn, node, self._emit)] = node

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Any, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        done: set[cf.Future] = set()
        while self._pending:
            step = self.POLL_SECONDS if deadline is None else max(0.0, min(self.POLL_SECONDS,
                                                                           deadline - time.monotonic()))
            done, _ = cf.wait(self._pending, timeout=step, return_when=cf.FIRST_COMPLETED)
            self._drain()
            if done or (deadline is not None and time.monotonic() >= deadline):
                break
        self._drain()  # a node puts its events before it returns: they all precede its record
        finished = []
        for future in done:
            node = self._pending.pop(future)
            exc = future.exception()
            finished.append((node, exc if exc is not None else future.result()))
        return finished

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            if any(not f.done() for f in self._pending):  # interrupted: do not wait for running nodes
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        if self._manager is not None:
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - the manager may already be gone after an interruption
                pass
            self._manager.shutdown()
            self._manager = self._events = self._emit = None

    def _drain(self) -> None:
        if self._events is None:
            return
        while True:
            try:
                event = self._events.get_nowait()
            except queue_module.Empty:
                return
            self._on_event(event)


class _QueueEmit:
    """The picklable ``emit`` handed to stage functions: puts each event on the Manager queue."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def __call__(self, event: dict) -> None:
        self.events.put(event)


def _ignore(event: dict) -> None:
    pass
