"""The default executor: runs cells one after another in this process."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from advbench.api import Executor


class LocalExecutor(Executor):
    name = "local"
    description = "Runs the grid's cells one after another in this process (the default)"

    def map(self, fn: Callable[[Any], Any], cells: Sequence[Any]) -> list[Any]:
        return [fn(cell) for cell in cells]
