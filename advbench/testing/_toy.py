"""Module-level stage functions for the executor checks: they pickle by reference, so any executor can ship them."""

from __future__ import annotations

import os
from typing import Any, Callable


def toy_stage(node: Any, emit: Callable[[dict], None]) -> dict:
    """Sum the node's ``values``, with a start and an end event, as a real stage reports progress."""
    emit({"node": node.key, "event": "start"})
    value = sum(node.params.get("values", ()))
    emit({"node": node.key, "event": "end"})
    return {"key": node.key, "value": value, "pid": os.getpid()}


class ToyStageError(RuntimeError):
    """What ``failing_stage`` raises: the executor must hand it back as ``(node, exception)``."""


def failing_stage(node: Any, emit: Callable[[dict], None]) -> dict:
    raise ToyStageError(f"toy failure in {node.key}")


def sometimes_failing_stage(node: Any, emit: Callable[[dict], None]) -> dict:
    if node.params.get("fail"):
        return failing_stage(node, emit)
    return toy_stage(node, emit)
