"""The default executor: runs nodes one after another in this process, in the order they were submitted."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from advbench.api import Executor


class LocalExecutor(Executor):
    """Runs each node in the driver's own process when the driver asks for a result.

    ``submit`` only queues; ``wait`` runs the oldest queued node and returns it, so nodes run in submission
    order, one at a time (``slots`` is 1). ``emit`` is the driver's ``on_event`` itself: progress is live.
    An exception raised by the stage function comes back as ``(node, exc)``; KeyboardInterrupt and other
    BaseExceptions that are not Exceptions propagate, so Ctrl-C stops the run. ``timeout`` is ignored: a node
    running in this process cannot be put aside.
    """

    name = "local"
    description = "Runs the plan's nodes one after another in this process (the default)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: deque[tuple[Callable, Any]] = deque()
        self._on_event: Callable[[dict], None] = _ignore

    @property
    def slots(self) -> int:
        return 1

    def open(self, on_event: Callable[[dict], None]) -> None:
        self._on_event = on_event

    def submit(self, fn: Callable[[Any, Callable[[dict], None]], dict], node: Any) -> None:
        self._queue.append((fn, node))

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Any, Any]]:
        if not self._queue:
            return []
        fn, node = self._queue.popleft()
        try:
            return [(node, fn(node, self._on_event))]
        except Exception as exc:  # noqa: BLE001 - the driver decides; KeyboardInterrupt is not caught
            return [(node, exc)]

    def close(self) -> None:
        self._queue.clear()


def _ignore(event: dict) -> None:
    pass
