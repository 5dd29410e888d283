"""The default executor: runs nodes one after another in this process."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from advbench.api import Executor


class LocalExecutor(Executor):
    name = "local"
    description = "Runs the plan's nodes one after another in this process (the default)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: deque = deque()
        self.on_event: Callable[[dict], None] = lambda event: None

    def open(self, on_event: Callable[[dict], None]) -> None:
        self.on_event = on_event

    def submit(self, fn, node) -> None:
        self.queue.append((fn, node))

    def wait(self, timeout: Optional[float] = None) -> list[tuple[Any, Any]]:
        if not self.queue:
            return []
        fn, node = self.queue.popleft()
        try:
            return [(node, fn(node, self.on_event))]
        except Exception as exc:  # KeyboardInterrupt passes: the driver writes what it has
            return [(node, exc)]
