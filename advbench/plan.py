"""A suite as a plan: a graph of pure, picklable stage nodes keyed by their cache keys.

A node is plain data: which stage function runs it (``stage``), the plugin that does the work and its
options, the keys of the nodes it reads, the seed salt and everything else its function needs, and rough
resource hints for an executor. Its ``key`` is the cache key its artifact is stored under, so a node whose key
is already in the cache is done, and two nodes with one key (a stage shared by two sweep points) are one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Settings:
    """Run-wide settings every node carries, so a worker on another machine needs nothing else."""

    cache_root: str
    device: str = "auto"  # resolved on the worker: a cluster node uses its own GPU
    batch_size: int = 128
    seed: int = 0
    threads: Optional[int] = None  # torch threads on the worker; None leaves torch's default


@dataclass(frozen=True)
class Node:
    key: str
    stage: str  # the stage function that computes it (advbench.stages.STAGES)
    label: str  # what a person reads in progress bars and run.log
    settings: Settings
    inputs: tuple[str, ...] = ()  # keys of the nodes whose artifacts it reads
    plugin: Optional[dict[str, str]] = None  # kind, name, distribution, version, revision
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # stage-specific plain data: salt, split, subset ...
    resources: dict[str, Any] = field(default_factory=dict)  # cpus, gpus, memory_mb: hints for an executor
    stored: bool = True  # False: computed on demand from its inputs, never written (a dataset load)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.key == self.key
