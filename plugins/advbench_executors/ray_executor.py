"""An executor that runs each node as a Ray task, on this machine or on a cluster (the optional ``ray`` extra)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from pydantic import Field

from advbench import api
from advbench.errors import AdvbenchError


class RayExecutor(api.Executor):
    """Runs every node as a Ray task with the node's resource hints (``cpus``, ``gpus``).

    ``ray`` is imported only in ``open``: the core and ``advbench list-plugins`` work without it. With no
    ``address`` ``open`` starts a private local Ray instance (``num_cpus`` of them) and ``close`` shuts it
    down; ``auto`` or ``ray://host:port`` joins a running cluster, which ``close`` leaves running (so does a
    Ray this process had already started). Progress events travel through a ``ray.util.queue.Queue``: its
    handle is the picklable ``emit``, and ``wait`` drains it into ``on_event`` while it waits and before it
    returns finished nodes. A worker that dies mid-task is retried ``max_retries`` times by Ray; an exception
    raised by the stage function comes back as ``(node, exc)`` with the original exception (chained to
    Ray's error, whose message holds the remote traceback). Before the first task runs, a probe on every
    alive Ray node checks that the cache folder (``node.settings.cache_root``) is visible there: inputs and
    outputs travel through it, so the cache must be a shared filesystem mounted at the same path everywhere.
    ``slots`` is the cluster's CPUs divided by the CPUs a node asks for (the last submitted node's, else 1).

    Options:
        address: None starts a local Ray instance; "auto" or "ray://host:port" joins a running cluster.
        num_cpus: CPUs of the local instance (None: all of this machine's); ignored when joining a cluster.
        max_retries: how often Ray reruns a task whose worker process died.
        include_dashboard: start Ray's dashboard with a local instance (needs ``ray[default]``).
    """

    name = "ray"
    description = "Runs each node as a Ray task on a local Ray instance or a cluster (optional extra: ray)"

    class Options(api.Options):
        address: Optional[str] = None
        num_cpus: Optional[int] = Field(None, ge=1)
        max_retries: int = Field(3, ge=0)
        include_dashboard: bool = False
        warm_workers: bool = Field(True, description="start one worker per slot and import torch there when "
                                                     "the executor opens, not in the first stage")

    POLL_SECONDS = 0.1  # how often wait drains progress events while nodes run

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ray: Any = None
        self._started = False
        self._events: Any = None
        self._remote: Any = None
        self._on_event: Callable[[dict], None] = _ignore
        self._pending: dict[Any, Any] = {}  # ObjectRef -> node
        self._probed = False
        self._node_cpus: float = 1

    @property
    def slots(self) -> int:
        if self._ray is None:
            return self.options.num_cpus or 1
        cpus = self._ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // max(self._node_cpus, 1e-9)))

    def open(self, on_event: Callable[[dict], None]) -> None:
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise AdvbenchError("executor ray: ray is not installed; pip install -e '.[ray]'") from None
        self._on_event = on_event
        if not ray.is_initialized():
            if self.options.address is None:
                ray.init(num_cpus=self.options.num_cpus, include_dashboard=self.options.include_dashboard)
            else:
                ray.init(address=self.options.address)
            self._started = True
        self._ray = ray
        self._events = Queue(actor_options={"num_cpus": 0})
        self._remote = ray.remote(_run_node)
        if self.options.warm_workers:
            # start one worker per slot and import the harness (torch) there now, as part of Ray's start-up,
            # so the first stage on each worker does not pay it while the others wait
            warm = ray.remote(_warm)
            ray.get([warm.options(num_cpus=1).remote(0.2) for _ in range(self.slots)])

    def submit(self, fn: Callable[[Any, Callable[[dict], None]], dict], node: Any) -> None:
        if self._ray is None:
            raise RuntimeError("RayExecutor.submit before open")
        if not self._probed:
            self._probe(node.settings.cache_root)
            self._probed = True
        resources = node.resources or {}
        self._node_cpus = resources.get("cpus", 1)
        ref = self._remote.options(num_cpus=self._node_cpus, num_gpus=resources.get("gpus", 0),
                                   max_retries=self.options.max_retries).remote(fn, node, self._events)
        self._pending[ref] = node

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Any, Any]]:
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list = []
        while self._pending:
            step = self.POLL_SECONDS if deadline is None else max(0.0, min(self.POLL_SECONDS,
                                                                           deadline - time.monotonic()))
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=step)
            self._drain()
            if ready or (deadline is not None and time.monotonic() >= deadline):
                break
        if ready:  # everything that is done by now, not just the first
            ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        self._drain()  # a task puts its events before it returns: they all precede its record
        finished = []
        for ref in ready:
            node = self._pending.pop(ref)
            try:
                finished.append((node, ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver as data
                finished.append((node, _original(exc)))
        return finished

    def close(self) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        for ref in self._pending:  # interrupted: stop what still runs
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a task that just finished cannot be cancelled
                pass
        self._pending.clear()
        if self._events is not None:
            try:
                self._drain_with(ray)
                self._events.shutdown()
            except Exception:  # noqa: BLE001 - the queue actor may be gone with the cluster
                pass
            self._events = None
        if self._started:
            ray.shutdown()
            self._started = False

    def _drain(self) -> None:
        self._drain_with(self._ray)

    def _drain_with(self, ray: Any) -> None:
        if self._events is None:
            return
        # only this process takes from the queue, so qsize items are there to take
        while (size := self._events.qsize()) > 0:
            for event in self._events.get_nowait_batch(size):
                self._on_event(event)

    def _probe(self, cache_root: str) -> None:
        """Fail with one line unless every alive Ray node sees the cache folder."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(_cache_visible)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [probe.options(num_cpus=0, max_retries=self.options.max_retries,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(cache_root) for n in nodes]
        for node, (visible, host) in zip(nodes, ray.get(refs)):
            if not visible:
                raise AdvbenchError(
                    f"executor ray: cache folder {cache_root} is not visible on Ray node {host} "
                    f"({node.get('NodeManagerAddress')}); set ADVBENCH_CACHE to a shared filesystem mounted "
                    f"at the same path on every machine")


def _run_node(fn: Callable[[Any, Callable[[dict], None]], dict], node: Any, events: Any) -> dict:
    """The Ray task: the queue's handle is the ``emit`` (``Queue.put`` blocks until the event is queued)."""
    return fn(node, events.put)


def _warm(seconds: float) -> int:
    import advbench.stages  # noqa: F401 - torch and the plugins' registry, imported once per worker

    time.sleep(seconds)  # hold the worker so the next warm-up task lands on another one
    return os.getpid()


def _cache_visible(cache_root: str) -> tuple[bool, str]:
    import socket

    return os.path.isdir(cache_root), socket.gethostname()


def _original(exc: BaseException) -> BaseException:
    """The stage function's own exception where Ray carries it, chained to Ray's error; else Ray's error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        if cause.__cause__ is None:
            cause.__cause__ = exc
        return cause
    return exc


def _ignore(event: dict) -> None:
    pass
